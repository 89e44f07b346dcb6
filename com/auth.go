package com

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// DefaultTokenLife is the life given to a token whose answer carries no
// expires_in. golang.org/x/oauth2 would treat such a token as never
// expiring; GreenLake tokens live 15 minutes, so that is assumed instead.
const DefaultTokenLife = 15 * time.Minute

// maxRenewMargin is how long before expiry a token is renewed, at most; for
// short-lived tokens the margin is a quarter of the token's life.
const maxRenewMargin = time.Minute

// tokenSource fetches client-credentials tokens, caches one and renews it
// before it expires. One fetch at a time: concurrent callers wait for it
// (or for their context).
type tokenSource struct {
	cfg     clientcredentials.Config
	hc      *http.Client
	timeout time.Duration
	logger  *slog.Logger
	metrics *metrics

	sem      chan struct{} // holds tok, obtained
	tok      *oauth2.Token
	obtained time.Time

	recentMu sync.Mutex
	recent   [2]string // the last two access tokens, for redaction
}

// secrets returns the client secret and the recent access tokens: texts
// that must be redacted from anything the client reports.
func (s *tokenSource) secrets() []string {
	s.recentMu.Lock()
	defer s.recentMu.Unlock()
	return []string{s.cfg.ClientSecret, s.recent[0], s.recent[1]}
}

func newTokenSource(cfg Config, hc *http.Client, logger *slog.Logger, m *metrics) *tokenSource {
	return &tokenSource{
		cfg: clientcredentials.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret,
			TokenURL:     cfg.TokenURL,
			// The notes describe client_id and client_secret in the form.
			AuthStyle: oauth2.AuthStyleInParams,
		},
		hc:      hc,
		timeout: cfg.Timeout,
		logger:  logger,
		metrics: m,
		sem:     make(chan struct{}, 1),
	}
}

// token returns a valid access token, fetching a new one when none is
// cached or the cached one is within its renewal margin. Errors are *Error.
func (s *tokenSource) token(ctx context.Context) (string, error) {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return "", &Error{Kind: KindTransient, Op: "get token", Message: "waiting for a token", Err: ctx.Err()}
	}
	defer func() { <-s.sem }()

	now := time.Now()
	if s.tok != nil {
		margin := min(maxRenewMargin, s.tok.Expiry.Sub(s.obtained)/4)
		if now.Before(s.tok.Expiry.Add(-margin)) {
			return s.tok.AccessToken, nil
		}
	}
	tok, err := s.fetch(ctx)
	if err != nil {
		return "", err
	}
	if tok.Expiry.IsZero() {
		tok.Expiry = now.Add(DefaultTokenLife)
	}
	s.tok, s.obtained = tok, now
	s.recentMu.Lock()
	s.recent[1], s.recent[0] = s.recent[0], tok.AccessToken
	s.recentMu.Unlock()
	s.metrics.tokenRenewals.Inc()
	s.logger.InfoContext(ctx, "obtained COM token", "expires_in", tok.Expiry.Sub(now).Round(time.Second))
	return tok.AccessToken, nil
}

// invalidate drops the cached token if it is still the one COM refused, so
// that the next token call fetches a fresh one.
func (s *tokenSource) invalidate(ctx context.Context, refused string) {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	if s.tok != nil && s.tok.AccessToken == refused {
		s.tok = nil
	}
	<-s.sem
}

func (s *tokenSource) fetch(ctx context.Context) (*oauth2.Token, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, s.hc)
	start := time.Now()
	tok, err := s.cfg.Token(ctx)
	code := "200"
	defer func() {
		s.metrics.observe(routeToken, http.MethodPost, code, time.Since(start))
	}()
	if err == nil {
		if tok.AccessToken == "" {
			code = "error"
			return nil, &Error{Kind: KindConfig, Op: "get token", Message: "token endpoint answered without an access_token"}
		}
		return tok, nil
	}
	// The oauth2 error text may quote the endpoint's body; it is not kept.
	e := &Error{Kind: KindTransient, Op: "get token"}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) && re.Response != nil {
		code = fmt.Sprint(re.Response.StatusCode)
		e.StatusCode = re.Response.StatusCode
		e.ErrorCode = sanitize([]byte(re.ErrorCode), s.cfg.ClientSecret)
		switch {
		case re.Response.StatusCode == http.StatusTooManyRequests || re.Response.StatusCode >= 500:
			e.Message = "token endpoint is unavailable"
		default:
			e.Kind = KindConfig
			e.Message = "token endpoint refused the client credentials (check the client id, secret and token URL)"
		}
		return nil, e
	}
	code = "error"
	// Transport errors name the token URL (which holds no credentials:
	// NewClient refuses userinfo) and never the form.
	e.Kind, e.Message = classifyTransport(ctx, err)
	e.Err = err
	return nil, e
}
