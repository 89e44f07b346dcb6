package com

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// comErrorBody is COM's error answer.
type comErrorBody struct {
	HTTPStatusCode int             `json:"httpStatusCode"`
	ErrorCode      string          `json:"errorCode"`
	Message        string          `json:"message"`
	DebugID        string          `json:"debugId"`
	ErrorDetails   json.RawMessage `json:"errorDetails"`
}

// classifyResponse turns a non-2xx answer into an *Error, deciding its Kind
// once: a COM error body (one with an errorCode) on 400/404/409/422 is
// KindRejected; 401 (reached only after the one renewal), 403, and a 404
// without COM's body (a gateway's, so a wrong base URL or region) are
// KindConfig; 408, 425, 429 and 5xx are KindTransient. Other 4xx answers
// without a COM body (405, 410: a wrong or sunset route) are KindConfig, and
// other 4xx answers with one are KindRejected. secrets are redacted from
// every text taken from the answer.
func classifyResponse(op string, resp *http.Response, body []byte, now time.Time, secrets ...string) *Error {
	e := &Error{Op: op, StatusCode: resp.StatusCode}
	var ce comErrorBody
	isCOM := json.Unmarshal(body, &ce) == nil && ce.ErrorCode != ""
	if isCOM {
		e.ErrorCode = sanitize([]byte(ce.ErrorCode), secrets...)
		e.Message = sanitize([]byte(ce.Message), secrets...)
		e.DebugID = sanitize([]byte(ce.DebugID), secrets...)
	} else {
		e.Message = describeBody(resp.Header.Get("Content-Type"), body, secrets...)
	}
	code := resp.StatusCode
	switch {
	case code == http.StatusTooManyRequests || code == http.StatusRequestTimeout || code == http.StatusTooEarly || code >= 500:
		e.Kind = KindTransient
		if code == http.StatusTooManyRequests {
			e.RetryAfter = retryAfter(resp.Header, now)
		} else {
			// COM sends ratelimit-* on every answer: the window's reset is
			// no reason to wait after a 5xx. Only an explicit Retry-After is.
			e.RetryAfter = retryAfterHeader(resp.Header, now)
		}
	case code == http.StatusUnauthorized:
		e.Kind = KindConfig
		e.Message = "COM refused a freshly obtained token (check credentials, workspace and region); " + e.Message
	case code == http.StatusForbidden:
		e.Kind = KindConfig
	case code == http.StatusNotFound && !isCOM:
		e.Kind = KindConfig
		e.Message = "not found, without COM's error body (check the base URL and region); " + e.Message
	case code == http.StatusBadRequest, code == http.StatusNotFound, code == http.StatusConflict, code == http.StatusUnprocessableEntity:
		e.Kind = KindRejected
	case code >= 400 && code < 500 && isCOM:
		e.Kind = KindRejected
	default:
		e.Kind = KindConfig
		e.Message = fmt.Sprintf("unexpected HTTP status %d; %s", code, e.Message)
	}
	return e
}

// classifyTransport classifies a failure to get any answer. Timeouts,
// resets, refused connections, EOF and cancelled contexts are transient; a
// TLS certificate problem is a configuration fault.
func classifyTransport(ctx context.Context, err error) (Kind, string) {
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var netErr net.Error
	switch {
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr):
		return KindConfig, "TLS certificate not trusted"
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled):
		return KindTransient, "cancelled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return KindTransient, "timed out"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return KindTransient, "connection reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return KindTransient, "connection refused"
	}
	return KindTransient, "no answer"
}

// describeBody describes a body that is not COM's error JSON: its content
// type and its first 200 bytes, sanitized.
func describeBody(contentType string, body []byte, secrets ...string) string {
	if len(strings.TrimSpace(string(body))) == 0 {
		return "empty body"
	}
	if contentType == "" {
		contentType = "untyped"
	}
	return fmt.Sprintf("unexpected %s body: %q", sanitize([]byte(contentType), secrets...), sanitize(body, secrets...))
}

// maxQuoted is how much of a foreign body an error quotes.
const maxQuoted = 200

// sanitize returns at most the first 200 bytes of b as valid UTF-8 with
// control characters turned into spaces, and every non-empty secret replaced
// by "[redacted]" (secrets are matched before truncation, so half a secret
// cannot survive either).
func sanitize(b []byte, secrets ...string) string {
	s := string(b)
	for _, sec := range secrets {
		if sec != "" {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	s = strings.ToValidUTF8(s, "?")
	if len(s) > maxQuoted {
		cut := maxQuoted
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
}

// maxPause caps how long one answer can pause every caller.
const maxPause = 10 * time.Minute

// retryAfter reads how long COM asked callers to wait: Retry-After (seconds
// or an HTTP date), else ratelimit-reset or x-ratelimit-reset (seconds to the
// reset, or a Unix time if larger than 10^9). Header names match in any case
// (net/http canonicalises them). Zero if none is usable; capped at 10 minutes.
func retryAfter(h http.Header, now time.Time) time.Duration {
	d := retryAfterHeader(h, now)
	if d <= 0 {
		d = min(max(resetIn(h, now), 0), maxPause)
	}
	return d
}

// retryAfterHeader reads Retry-After alone (seconds or an HTTP date); zero
// if absent or unusable; capped at 10 minutes.
func retryAfterHeader(h http.Header, now time.Time) time.Duration {
	var d time.Duration
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if n, err := strconv.ParseFloat(v, 64); err == nil && n > 0 {
			d = time.Duration(n * float64(time.Second))
		} else if t, err := http.ParseTime(v); err == nil {
			d = t.Sub(now)
		}
	}
	return min(max(d, 0), maxPause)
}

// resetIn reads ratelimit-reset / x-ratelimit-reset; zero if absent.
func resetIn(h http.Header, now time.Time) time.Duration {
	for _, name := range []string{"Ratelimit-Reset", "X-Ratelimit-Reset"} {
		v := strings.TrimSpace(h.Get(name))
		if v == "" {
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil || n < 0 {
			continue
		}
		if n > 1e9 {
			return time.Unix(int64(n), 0).Sub(now)
		}
		return time.Duration(n * float64(time.Second))
	}
	return 0
}

// remainingHeader reads ratelimit-remaining / x-ratelimit-remaining.
func remainingHeader(h http.Header) (int, bool) {
	for _, name := range []string{"Ratelimit-Remaining", "X-Ratelimit-Remaining"} {
		if n, err := strconv.Atoi(strings.TrimSpace(h.Get(name))); err == nil && n >= 0 {
			return n, true
		}
	}
	return 0, false
}
