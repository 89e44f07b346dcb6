package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/comjobs/comjobs/com"
)

// recover resolves a claim without a job id: it finds the job the claim's
// POST may have created, or, once COM's list has had time to show it, posts
// again.
func (c *Consumer) recover(ctx context.Context, r *request, le *ledgerEntry, rev uint64) error {
	now := c.now()
	age := now.Sub(le.ClaimedAt)
	if le.PostEndedAt == nil && age < c.cfg.POSTTimeout {
		return &waitErr{delay: min(c.backoff(int(r.delivered)), c.cfg.POSTTimeout-age) + 10*time.Millisecond,
			why: "claimed " + age.Round(time.Millisecond).String() + " ago: a worker may still be inside its POST"}
	}
	rh := resHash(le.TemplateID, le.ResourceType, le.ResourceID)
	holder, err := c.ledger.lock(ctx, rh, r.key)
	if err != nil {
		return err
	}
	if holder != "" {
		stale, err := c.breakStaleLock(ctx, rh, holder)
		if err != nil {
			return err
		}
		if !stale {
			return &waitErr{delay: c.backoff(int(r.delivered)), why: "another claim for this template and resource is being recovered"}
		}
		if holder, err = c.ledger.lock(ctx, rh, r.key); err != nil || holder != "" {
			return &waitErr{delay: c.backoff(int(r.delivered)), why: "recovery lock is busy"}
		}
	}
	// Holding the lock, wait for requests still inside their POST: their
	// jobs would look unowned.
	flights, err := c.ledger.flights(ctx, rh, r.key, now, c.cfg.POSTTimeout)
	if err != nil {
		return err
	}
	for other := range flights {
		return &waitErr{delay: c.backoff(int(r.delivered)), why: "request " + other + " for the same template and resource is inside its POST"}
	}
	r.log.Warn("recovering a claim without a job id: looking in COM", "claimedAt", le.ClaimedAt, "postEndedAt", le.PostEndedAt)
	job, err := c.search(ctx, r, le)
	if err != nil {
		return err
	}
	if job != nil {
		r.log.Warn("recovered the job this request created before", "jobId", job.ID)
		err := c.record(ctx, r, le, rev, job)
		if uerr := c.ledger.unlock(context.WithoutCancel(ctx), rh, r.key); uerr != nil {
			r.log.Warn("could not release the recovery lock", "err", uerr)
		}
		return err
	}
	settled := le.ClaimedAt.Add(c.cfg.POSTTimeout)
	if le.PostEndedAt != nil {
		settled = *le.PostEndedAt
	}
	if wait := settled.Add(c.cfg.ListLag).Sub(now); wait > 0 {
		return &waitErr{delay: wait + 10*time.Millisecond, why: "no job found yet; COM's list may lag"}
	}
	if r.expired != nil {
		return r.expired
	}
	// COM created nothing: claim again and post. The flight mark goes up
	// before the lock comes down.
	le.ClaimedAt, le.PostEndedAt, le.Owner, le.UpdatedAt = now, nil, c.cfg.Owner, now
	if err := c.ledger.startFlight(ctx, rh, r.key, now); err != nil {
		return err
	}
	rev, err = c.ledger.put(ctx, r.key, le, rev)
	if err != nil {
		_ = c.ledger.endFlight(ctx, rh, r.key)
		return err
	}
	if err := c.ledger.unlock(ctx, rh, r.key); err != nil {
		r.log.Warn("could not release the recovery lock", "err", err)
	}
	r.log.Warn("no job in COM for this claim: submitting again")
	c.d.Hook("after-claim")
	return c.post(ctx, r, le, rev, rh)
}

// search looks in COM for jobs of the claim's template and resource created
// since the claim (less ClockSkew): the one this request already owns, or
// else the oldest no other request owns, which it adopts. It returns nil
// when there is none.
func (c *Consumer) search(ctx context.Context, r *request, le *ledgerEntry) (*com.Job, error) {
	since := le.ClaimedAt.Add(-c.cfg.ClockSkew)
	match := func(j *com.Job) bool {
		return j.TemplateID == le.TemplateID && j.ResourceID == le.ResourceID && !j.CreatedAt.Before(since) &&
			(j.ResourceType == "" || j.ResourceType == le.ResourceType)
	}
	var found []com.Job
	ctx, cancel := context.WithTimeout(ctx, c.cfg.POSTTimeout)
	defer cancel()
	start := time.Now()
	var err error
	if c.d.COM.APIVersion() == "" || c.d.COM.APIVersion() == "v1" {
		filter := fmt.Sprintf("resource/id eq '%s' and jobTemplate eq '%s' and createdAt ge %s",
			odataString(le.ResourceID), odataString(le.TemplateID), since.UTC().Format(time.RFC3339))
		err = c.d.COM.ListAll(ctx, com.ListOptions{Filter: filter, Sort: "createdAt asc"}, func(j *com.Job) error {
			if match(j) {
				found = append(found, *j)
			}
			return nil
		})
	} else {
		// The sunset versions: walk the newest jobs back to the claim.
		err = c.walkNewest(ctx, since, func(j *com.Job) {
			if match(j) {
				found = append(found, *j)
			}
		})
	}
	c.m.comLatency.Observe(time.Since(start).Seconds())
	if err != nil {
		var ce *com.Error
		if errors.As(err, &ce) && ce.RetryAfter > 0 && ce.StatusCode == 429 {
			c.gate.block(c.now().Add(ce.RetryAfter))
		}
		return nil, fmt.Errorf("look for the claim's job in COM: %w", err)
	}
	slices.SortStableFunc(found, func(a, b com.Job) int { return a.CreatedAt.Compare(b.CreatedAt) })
	// A job this request already owns comes first: its owner record is
	// written before the submitted event, so the event may name it already.
	for i := range found {
		owner, err := c.ledger.owner(ctx, found[i].ID)
		if err != nil {
			return nil, err
		}
		if owner == r.key {
			return &found[i], nil
		}
	}
	for i := range found {
		mine, err := c.ledger.own(ctx, found[i].ID, r.key)
		if err != nil {
			return nil, err
		}
		if mine {
			return &found[i], nil
		}
		r.log.Info("skipping a job another request owns", "jobId", found[i].ID)
	}
	return nil, nil
}

// walkNewest pages through jobs newest first until they are older than since.
func (c *Consumer) walkNewest(ctx context.Context, since time.Time, fn func(*com.Job)) error {
	const page = 100
	for offset := 0; ; offset += page {
		p, err := c.d.COM.List(ctx, com.ListOptions{Sort: "createdAt desc", Limit: page, Offset: offset})
		if err != nil {
			return err
		}
		for i := range p.Items {
			if p.Items[i].CreatedAt.Before(since) {
				return nil
			}
			fn(&p.Items[i])
		}
		if len(p.Items) < page || (p.Total > 0 && offset+len(p.Items) >= p.Total) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// odataString escapes s for a single-quoted OData literal.
func odataString(s string) string { return strings.ReplaceAll(s, "'", "''") }
