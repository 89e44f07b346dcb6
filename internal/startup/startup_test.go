package startup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

type checkErr struct{ transient bool }

func (e checkErr) Error() string   { return fmt.Sprint("check, transient ", e.transient) }
func (e checkErr) Transient() bool { return e.transient }

func TestTransient(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{context.DeadlineExceeded, true},
		{fmt.Errorf("stream info: %w", nats.ErrTimeout), true},
		{nats.ErrNoResponders, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{jetstream.ErrStreamNotFound, false},
		{jetstream.ErrBucketNotFound, false},
		{&jetstream.APIError{Code: 403, Description: "permissions violation"}, false},
		{jetstream.ErrJetStreamNotEnabled, false},
		{jetstream.ErrJetStreamNotEnabledForAccount, false},
		{context.Canceled, false},
		{fmt.Errorf("topology: %w", checkErr{true}), true},
		{checkErr{false}, false},
		{errors.New("settings: bad"), false},
	} {
		if got := Transient(c.err); got != c.want {
			t.Errorf("Transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestRetry(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ctx := t.Context()

	// Transient twice, then fine.
	calls := 0
	err := Retry(ctx, log, "x", time.Minute, func(context.Context) error {
		if calls++; calls < 3 {
			return nats.ErrTimeout
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("transient then fine: err %v after %d calls, want nil after 3", err, calls)
	}

	// A refusal ends it at once.
	calls = 0
	err = Retry(ctx, log, "x", time.Minute, func(context.Context) error { calls++; return jetstream.ErrStreamNotFound })
	if !errors.Is(err, jetstream.ErrStreamNotFound) || calls != 1 {
		t.Fatalf("refusal: err %v after %d calls, want ErrStreamNotFound after 1", err, calls)
	}

	// Transient for ever: it gives up once within has passed, with the last error.
	start := time.Now()
	err = Retry(ctx, log, "x", 500*time.Millisecond, func(context.Context) error { return nats.ErrNoResponders })
	if !errors.Is(err, nats.ErrNoResponders) || time.Since(start) > 2*time.Second {
		t.Fatalf("transient for ever: err %v after %s, want ErrNoResponders within about 0.5 s", err, time.Since(start))
	}

	// A call that hangs is cut at the bound: fn's context ends there.
	start = time.Now()
	err = Retry(ctx, log, "x", 300*time.Millisecond, func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("hanging call: err %v after %s, want the bound's deadline within about 0.3 s", err, time.Since(start))
	}

	// The caller's context ends the wait.
	cctx, cancel := context.WithCancel(ctx)
	calls = 0
	err = Retry(cctx, log, "x", time.Minute, func(context.Context) error {
		if calls++; calls == 2 {
			cancel()
		}
		return nats.ErrTimeout
	})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, nats.ErrTimeout) || calls != 2 {
		t.Fatalf("cancelled: err %v after %d calls, want Canceled joined with the last error after 2", err, calls)
	}
}
