package comsim

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
	"sync"
	"time"
)

// tokens issues and checks bearer tokens. Safe for concurrent use.
type tokens struct {
	mu     sync.Mutex
	expiry map[string]time.Time
}

func newTokens() *tokens { return &tokens{expiry: make(map[string]time.Time)} }

func (t *tokens) issue(now time.Time, life time.Duration) string {
	b := make([]byte, 24)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	tok := "simtok-" + hex.EncodeToString(b)
	t.mu.Lock()
	defer t.mu.Unlock()
	// Forget long-dead tokens so a long run does not grow without bound.
	if len(t.expiry) > 10_000 {
		for k, exp := range t.expiry {
			if now.After(exp) {
				delete(t.expiry, k)
			}
		}
	}
	t.expiry[tok] = now.Add(life)
	return tok
}

func (t *tokens) valid(tok string, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	exp, ok := t.expiry[tok]
	return ok && now.Before(exp)
}

// expireAll makes every token issued so far invalid.
func (t *tokens) expireAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.expiry)
}

// handleToken is the OAuth2 client-credentials token endpoint, like
// GreenLake's: form grant_type=client_credentials with client_id and
// client_secret in the form or in basic auth.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": "unreadable form"})
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "unsupported_grant_type", "error_description": "grant_type must be client_credentials"})
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if subtle.ConstantTimeCompare([]byte(id), []byte(s.clientID)) != 1 ||
		subtle.ConstantTimeCompare([]byte(secret), []byte(s.clientSecret)) != 1 {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client", "error_description": "client authentication failed"})
		return
	}
	tok := s.tokens.issue(s.now(), s.tokenLife)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"token_type":   "Bearer",
		"expires_in":   int(s.tokenLife / time.Second),
	})
}

// authorized reports whether r carries a live bearer token.
func (s *Server) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	const p = "bearer "
	if len(h) <= len(p) || !strings.EqualFold(h[:len(p)], p) {
		return false
	}
	return s.tokens.valid(strings.TrimSpace(h[len(p):]), s.now())
}

// ExpireTokens ends the life of every token issued so far, as an early
// expiry at COM would: the next call with one gets 401.
func (s *Server) ExpireTokens() { s.tokens.expireAll() }

// ClientID returns the client id the token endpoint accepts.
func (s *Server) ClientID() string { return s.clientID }

// ClientSecret returns the client secret the token endpoint accepts (for
// wiring a client to the simulator; it is a test credential).
func (s *Server) ClientSecret() string { return s.clientSecret }
