package tracker

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/comjobs/comjobs/com"
)

// ChallengeHeader is the header of COM's webhook verification handshake.
const ChallengeHeader = "x-compute-ops-mgmt-verification-challenge"

// maxWebhookBody bounds a webhook delivery (a job body is a few KiB).
const maxWebhookBody = 1 << 20

// WebhookHandler serves COM webhooks:
//
//   - GET with the verification challenge header answers 200
//     {"verification": <challenge>};
//   - POST with a job body and the shared secret in WebhookSecretHeader feeds
//     the job through the state machine (200), or answers 202 for a job that
//     is not tracked. Deliveries may be duplicated or out of order: stale
//     generations are ignored.
//
// It answers 404 when Config.WebhookSecret is empty (webhooks off), 401 for
// a missing or wrong secret, 400/413 for a body that is not a job, and 503
// while the tracker is not ready or cannot record the observation (COM
// retries). It never answers 500. Safe for concurrent use.
func (t *Tracker) WebhookHandler() http.Handler {
	return http.HandlerFunc(t.serveWebhook)
}

func (t *Tracker) serveWebhook(w http.ResponseWriter, r *http.Request) {
	answer := func(code int, outcome, msg string) {
		t.m.webhooks.WithLabelValues(outcome).Inc()
		http.Error(w, msg, code)
	}
	if t.cfg.WebhookSecret == "" {
		answer(http.StatusNotFound, "disabled", "webhooks are not enabled")
		return
	}
	switch r.Method {
	case http.MethodGet:
		v := r.Header.Get(ChallengeHeader)
		if v == "" {
			answer(http.StatusBadRequest, "bad-challenge", "missing "+ChallengeHeader)
			return
		}
		t.m.webhooks.WithLabelValues("challenge").Inc()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"verification": v})
		return
	case http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, POST")
		answer(http.StatusMethodNotAllowed, "bad-method", "GET or POST only")
		return
	}
	got := r.Header.Get(WebhookSecretHeader)
	if subtle.ConstantTimeCompare([]byte(got), []byte(t.cfg.WebhookSecret)) != 1 {
		t.log.Warn("webhook with a missing or wrong secret refused", "remote", r.RemoteAddr)
		answer(http.StatusUnauthorized, "unauthorized", "missing or wrong "+WebhookSecretHeader)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWebhookBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			answer(http.StatusRequestEntityTooLarge, "too-large", "body too large")
			return
		}
		answer(http.StatusBadRequest, "bad-body", "reading body failed")
		return
	}
	job, err := com.DecodeJob(body)
	if err != nil {
		answer(http.StatusBadRequest, "bad-body", "not a COM job: "+err.Error())
		return
	}
	if err := t.Ready(); err != nil {
		answer(http.StatusServiceUnavailable, "not-ready", "tracker not ready")
		return
	}
	if _, tracked := t.lookup(job.ID); !tracked {
		if _, parentTracked := t.lookup(job.ParentJobID); job.ParentJobID == "" || !parentTracked {
			answer(http.StatusAccepted, "untracked", "job not tracked")
			return
		}
	}
	if err := t.consider(r.Context(), job); err != nil {
		t.log.Warn("webhook observation not recorded", "job", job.ID, "err", err)
		answer(http.StatusServiceUnavailable, "failed", "observation not recorded, retry")
		return
	}
	t.m.webhooks.WithLabelValues("observed").Inc()
	w.WriteHeader(http.StatusOK)
}
