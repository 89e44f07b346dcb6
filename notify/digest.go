package notify

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

type digestKey struct{ parent, channel string }

// digestGroup gathers terminal events of one parent's children bound for
// one channel during DigestWindow.
type digestGroup struct {
	key      digestKey
	deadline time.Time
	items    []*item
}

// digestEligible returns the group key of a child job's terminal event.
func (n *Notifier) digestEligible(it *item) *digestKey {
	if len(it.acts) != 1 {
		return nil
	}
	a := it.acts[0]
	if a.m.Kind != KindTerminal || a.parent == "" || a.job == nil {
		return nil
	}
	return &digestKey{parent: a.parent, channel: a.m.Channel}
}

func (n *Notifier) addToDigest(k digestKey, it *item) {
	g, ok := n.digests[k]
	if !ok {
		g = &digestGroup{key: k, deadline: time.Now().Add(n.cfg.DigestWindow)}
		n.digests[k] = g
	}
	g.items = append(g.items, it)
}

// dueDigests removes and returns the groups whose window has passed (all of
// them when all is set).
func (n *Notifier) dueDigests(all bool) []*digestGroup {
	var due []*digestGroup
	now := time.Now()
	for k, g := range n.digests {
		if all || !now.Before(g.deadline) {
			due = append(due, g)
			delete(n.digests, k)
		}
	}
	return due
}

// handleDigest posts one digest for a group above DigestThreshold, claiming
// every member's (job, terminal) key for it first; members already posted
// are acked, members claimed elsewhere and small groups go the single path.
func (n *Notifier) handleDigest(ctx context.Context, g *digestGroup) {
	var single, fresh []*item
	for _, it := range g.items {
		e, err := n.kv.Get(ctx, it.acts[0].m.Key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			fresh = append(fresh, it)
		case err != nil:
			single = append(single, it)
		default:
			var rec record
			if json.Unmarshal(e.Value(), &rec) == nil && rec.Posted {
				n.met.messages.WithLabelValues(n.info.Name, KindTerminal, "duplicate").Inc()
				ackQuiet(it.msg)
				continue
			}
			single = append(single, it)
		}
	}
	defer func() {
		for _, it := range single {
			n.handle(ctx, it)
		}
	}()
	if len(fresh) <= n.cfg.DigestThreshold {
		single = append(single, fresh...)
		return
	}
	ref := fresh[0].acts[0].job.JobID
	type member struct {
		it  *item
		rev uint64
	}
	var members []member
	for _, it := range fresh {
		b, _ := json.Marshal(record{JobID: g.key.parent, Kind: KindDigest, Ref: ref, Channel: g.key.channel, Owner: n.id, ClaimedAt: n.now()})
		rev, err := n.kv.Create(ctx, it.acts[0].m.Key, b)
		if err != nil {
			single = append(single, it)
			continue
		}
		members = append(members, member{it, rev})
	}
	if len(members) == 0 {
		return
	}
	acts := make([]action, len(members))
	for i, mb := range members {
		acts[i] = mb.it.acts[0]
	}
	m := n.digestMessage(g.key.parent, g.key.channel, acts)
	m.Ref = ref
	var msg jetstream.Msg = members[0].it.msg
	r, err := n.post(ctx, msg, m)
	if err != nil {
		e := classify(err)
		for _, mb := range members {
			n.unclaimIfUnsent(ctx, mb.it.acts[0].m.Key, mb.rev, err)
		}
		n.log.Warn("digest failed", "parent", g.key.parent, "children", len(members), "reason", e.Reason, "err", err)
		for _, mb := range members {
			switch e.Class {
			case Permanent:
				n.met.messages.WithLabelValues(n.info.Name, KindDigest, "dead_letter").Inc()
				n.deadLetter(ctx, mb.it.msg, e.Reason, err)
			case Setup:
				n.pause(e)
				nakQuiet(mb.it.msg, n.cfg.ProbeInterval)
			default:
				nakQuiet(mb.it.msg, n.backoff(mb.it.msg, e.RetryAfter))
			}
		}
		return
	}
	for _, mb := range members {
		b, _ := json.Marshal(record{JobID: g.key.parent, Kind: KindDigest, Ref: ref, Channel: firstNonEmpty(r.Channel, g.key.channel),
			TS: r.TS, Posted: true, Owner: n.id, ClaimedAt: n.now(), PostedAt: n.now()})
		if _, err := n.kv.Update(ctx, mb.it.acts[0].m.Key, b, mb.rev); err != nil {
			n.log.Warn("record digest member", "key", mb.it.acts[0].m.Key, "err", err)
		}
		ackQuiet(mb.it.msg)
	}
	n.met.digests.Inc()
	n.met.messages.WithLabelValues(n.info.Name, KindDigest, "posted").Inc()
	n.log.Info("digest posted", "parent", g.key.parent, "channel", g.key.channel, "children", len(members))
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
