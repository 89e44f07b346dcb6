package tracker

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// LeaseKey is the key of the poll lease in the comjobs-control bucket.
const LeaseKey = "tracker.lease"

type leaseValue struct {
	Holder string    `json:"holder"`
	Since  time.Time `json:"since"`
}

// lease competes for the poll lease and polls while it holds it. The lease
// is a key whose revision the holder bumps every LeaseTTL/3; a replica that
// sees the revision unchanged for LeaseTTL (by its own clock, so clock skew
// does not matter) takes it over with a compare-and-set. A holder that could
// not renew for 3/4 of LeaseTTL stops polling before anyone can take over.
// On ctx end a held lease is released so another replica takes over at once.
func (t *Tracker) lease(ctx context.Context) error {
	period := max(t.cfg.LeaseTTL/3, time.Millisecond)
	tick := time.NewTicker(period)
	defer tick.Stop()

	var (
		rev, seenRev      uint64
		seenAt, renewedAt time.Time
		stopPolling       func()
		val               = leaseValue{Holder: t.cfg.Instance}
	)
	gain := func(r uint64, now time.Time) {
		rev, renewedAt = r, now
		t.leading.Store(true)
		t.m.leader.Set(1)
		t.m.leaderChanges.Inc()
		t.log.Info("poll lease acquired")
		pctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			t.poll(pctx)
		}()
		stopPolling = func() { cancel(); <-done }
	}
	lose := func(why string, err error) {
		stopPolling()
		stopPolling = nil
		t.leading.Store(false)
		t.m.leader.Set(0)
		t.log.Warn("poll lease lost", "why", why, "err", err)
	}
	defer func() {
		if stopPolling == nil {
			return
		}
		stopPolling()
		t.leading.Store(false)
		t.m.leader.Set(0)
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := t.ctl.Delete(dctx, LeaseKey, jetstream.LastRevision(rev)); err != nil {
			t.log.Warn("releasing poll lease", "err", err)
		} else {
			t.log.Info("poll lease released")
		}
	}()

	for {
		now := time.Now()
		val.Since = now
		data, _ := json.Marshal(val)
		if stopPolling != nil {
			r, err := t.ctl.Update(ctx, LeaseKey, data, rev)
			switch {
			case err == nil:
				rev, renewedAt = r, now
			case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyNotFound):
				lose("taken over", err)
			case now.Sub(renewedAt) > t.cfg.LeaseTTL*3/4:
				lose("not renewed in time", err)
			}
		} else {
			e, err := t.ctl.Get(ctx, LeaseKey)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound), errors.Is(err, jetstream.ErrKeyDeleted):
				if r, err := t.ctl.Create(ctx, LeaseKey, data); err == nil {
					gain(r, now)
				}
			case err != nil:
				if ctx.Err() == nil {
					t.log.Warn("reading poll lease", "err", err)
				}
			case e.Revision() != seenRev:
				seenRev, seenAt = e.Revision(), now
			case now.Sub(seenAt) >= t.cfg.LeaseTTL:
				if r, err := t.ctl.Update(ctx, LeaseKey, data, seenRev); err == nil {
					gain(r, now)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
