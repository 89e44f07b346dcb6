// Package startup retries a role's first JetStream calls while the cluster
// does not answer — a server restarting, a leader being elected — so a
// process started in that moment waits for it instead of exiting with a
// misleading error. A refusal (a stream that does not exist, a permission
// denied) ends the wait at once: that needs a person, not time.
package startup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Wait is how long Retry keeps trying by default: longer than a server
// restart or a leader election, short enough that a cluster that is really
// gone fails the start where an operator sees it.
const Wait = time.Minute

// transienter is an error that knows whether it is worth waiting out
// (topology.CheckError).
type transienter interface{ Transient() bool }

// Transient reports an error that says JetStream did not answer (yet): a
// timeout, no responders, a connection being re-established, or a cluster
// that has no leader for the asset — as opposed to a refusal.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var t transienter
	if errors.As(err, &t) {
		return t.Transient()
	}
	var ae *jetstream.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode {
		case jetstream.JSErrCodeJetStreamNotEnabled, jetstream.JSErrCodeJetStreamNotEnabledForAccount:
			return false // a 503 too, but configuration, not a moment
		}
		// 503: "JetStream system temporarily unavailable", "cluster not
		// available", no leader for the stream or consumer.
		return ae.Code == 503
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoHeartbeat) ||
		errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrConnectionReconnecting)
}

// Retry calls fn until it succeeds, fails with an error that is not
// Transient, ctx ends, or within has passed since the first call; it
// returns fn's last error (or ctx's). fn's context ends at that bound, so
// a call that hangs cannot stretch it. Between calls it waits 200 ms,
// doubling up to 5 s, and logs each wait with what was being done.
func Retry(ctx context.Context, log *slog.Logger, what string, within time.Duration, fn func(context.Context) error) error {
	deadline := time.Now().Add(within)
	bounded, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	delay := 200 * time.Millisecond
	for {
		err := fn(bounded)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil: // stopped: say so, whatever the call made of it
			return errors.Join(ctx.Err(), err)
		case !Transient(err):
			return err
		case bounded.Err() != nil || time.Now().Add(delay).After(deadline):
			return fmt.Errorf("%s: gave up after %s: %w", what, within, err)
		}
		log.Warn("JetStream does not answer yet: trying again", "what", what, "in", delay, "err", err)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(ctx.Err(), err)
		case <-t.C:
		}
		delay = min(2*delay, 5*time.Second)
	}
}
