package com

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter paces every call the client makes to COM (token calls excepted).
// COM counts calls per API client, so a limiter shared by all processes that
// use the same credentials keeps them within one budget; RateLimiter shares
// it only within one process.
type Limiter interface {
	// Wait blocks until a call may be made or ctx is done (returning its error).
	Wait(ctx context.Context) error
	// Backoff tells the limiter that COM asked everyone to wait until the
	// given time (a 429 or a Retry-After); Wait must not return before it.
	Backoff(until time.Time)
}

var _ Limiter = (*RateLimiter)(nil)

// RateLimiter is the in-process Limiter: a token bucket
// (golang.org/x/time/rate) plus a pause that Backoff extends. Safe for
// concurrent use.
type RateLimiter struct {
	bucket *rate.Limiter

	mu    sync.Mutex
	until time.Time
}

// NewRateLimiter returns a limiter allowing perMinute calls a minute on
// average with bursts of burst calls. perMinute <= 0 means no rate limit
// (Backoff is still honoured); burst < 1 is taken as 1.
func NewRateLimiter(perMinute, burst int) *RateLimiter {
	if burst < 1 {
		burst = 1
	}
	limit := rate.Inf
	if perMinute > 0 {
		limit = rate.Limit(float64(perMinute) / 60)
	}
	return &RateLimiter{bucket: rate.NewLimiter(limit, burst)}
}

// Wait waits out any pause set by Backoff, then for a token of the bucket.
func (l *RateLimiter) Wait(ctx context.Context) error {
	for {
		l.mu.Lock()
		d := time.Until(l.until)
		l.mu.Unlock()
		if d <= 0 {
			break
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	return l.bucket.Wait(ctx)
}

// Backoff pauses every Wait until the given time; an earlier time than the
// current pause changes nothing.
func (l *RateLimiter) Backoff(until time.Time) {
	l.mu.Lock()
	if until.After(l.until) {
		l.until = until
	}
	l.mu.Unlock()
}
