package consumer

import (
	"fmt"
	"testing"
	"time"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/com/comsim"
	"github.com/comjobs/comjobs/internal/poll"
	"github.com/comjobs/comjobs/natsrv"
	"github.com/comjobs/comjobs/schemas"
	"github.com/comjobs/comjobs/topology"
)

// testLedger is the ledger of e's bucket, as Run builds it.
func testLedger(t *testing.T, e *env) ledger {
	t.Helper()
	kv, err := e.js.KeyValue(t.Context(), schemas.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	st, err := e.js.Stream(t.Context(), "KV_"+schemas.BucketLedger)
	if err != nil {
		t.Fatal(err)
	}
	return ledger{kv: kv, js: e.js, st: st}
}

// TestFlightMarkGuardedByLock: an in-flight mark is stored only while
// lock.<rh> is at the revision the writer saw, so no mark lands after a
// recovery took the lock; every mark stored before is listed by that
// recovery, as in flight while its claim is unresolved or unreadable.
func TestFlightMarkGuardedByLock(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	l := testLedger(t, e)
	ctx := t.Context()
	rh := resHash("tpl", "type", "res")
	now := time.Now()
	mark := func(key string, lockRev uint64) error {
		f, err := l.startFlightAsync(rh, key, now, lockRev)
		if err != nil {
			return err
		}
		return wait(ctx, f)
	}
	if err := mark("before", 0); err != nil {
		t.Fatalf("mark while the lock was never taken: %v", err)
	}
	if holder, err := l.lock(ctx, rh, "R"); err != nil || holder != "" {
		t.Fatalf("lock: holder %q, %v", holder, err)
	}
	if err := mark("after", 0); !isConflict(err) {
		t.Fatalf("mark after the lock was taken: %v, want a conflict", err)
	}
	held, holder, err := l.lockState(ctx, rh)
	if err != nil || holder != "R" || held == 0 {
		t.Fatalf("lock state: rev %d holder %q, %v", held, holder, err)
	}
	if err := mark("after", held); err != nil {
		t.Fatalf("mark against the held lock's revision (as its holder would): %v", err)
	}
	if err := l.unlock(ctx, rh, "R"); err != nil {
		t.Fatal(err)
	}
	free, holder, err := l.lockState(ctx, rh)
	if err != nil || holder != "" || free <= held {
		t.Fatalf("released lock state: rev %d (held at %d) holder %q, %v", free, held, holder, err)
	}
	if err := mark("later", held); !isConflict(err) {
		t.Fatalf("mark against a stale lock revision: %v, want a conflict", err)
	}
	if err := mark("later", free); err != nil {
		t.Fatalf("mark against the released lock's revision: %v", err)
	}
	// No claims exist: every young mark counts as in flight; an old one does not.
	fl, err := l.flights(ctx, rh, "later", now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(fl) != 2 || fl["before"].IsZero() || fl["after"].IsZero() {
		t.Fatalf("flights %v, want before and after", fl)
	}
	if fl, err := l.flights(ctx, rh, "", now.Add(time.Minute), time.Minute); err != nil || len(fl) != 0 {
		t.Fatalf("flights a POST timeout later: %v %v, want none", fl, err)
	}
}

// TestFreshWaitsForRecoveryLock: while a claimed request holds the
// recovery lock of a template and resource, a new request for them is not
// posted; once the lock is gone it is, once.
func TestFreshWaitsForRecoveryLock(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 20)
	l := testLedger(t, e)
	ctx := t.Context()
	tpl, _ := com.Lookup("server-restart")
	rh := resHash(tpl.ID, server1.Type, server1.ID)
	holder := schemas.RequestKey("//test/lock", "holder")
	now := time.Now()
	_, err := l.put(ctx, holder, &ledgerEntry{State: stateClaimed, ClaimedAt: now, TemplateID: tpl.ID,
		ResourceType: server1.Type, ResourceID: server1.ID, UpdatedAt: now}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := l.lock(ctx, rh, holder); err != nil || h != "" {
		t.Fatalf("lock: holder %q, %v", h, err)
	}
	e.request(t, "//test/lock", "fresh", "server-restart", server1, nil)
	c, reg := e.newConsumer(t, testConfig(20), nil)
	run(t, c)
	poll.Until(t, 10*time.Second, "the fresh request handed back", func() (bool, string) {
		n := counter(t, reg, "comjobs_consumer_retries_total")
		return n >= 2, fmt.Sprintf("%.0f retries", n)
	})
	if jobs := topJobs(e.sim); len(jobs) != 0 {
		t.Fatalf("posted while the lock was held: %d jobs", len(jobs))
	}
	if err := l.unlock(ctx, rh, holder); err != nil {
		t.Fatal(err)
	}
	if err := l.kv.Delete(ctx, reqKey(holder)); err != nil {
		t.Fatal(err)
	}
	e.drained(t, 15*time.Second)
	if jobs := topJobs(e.sim); len(jobs) != 1 {
		t.Fatalf("simulator holds %d jobs, want 1", len(jobs))
	}
}

// newClusterEnv is newEnv on a 3-node cluster with every stream and bucket
// replicated 3 times.
func newClusterEnv(t *testing.T, maxDeliver int) *env {
	t.Helper()
	cl, err := natsrv.StartCluster(t.Context(), "consumer-test", 3, t.TempDir(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Shutdown)
	e := connect(t, cl.URLs())
	if _, err := topology.Ensure(t.Context(), e.js, topology.Options{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	setDurableReplicas(t, e.js, maxDeliver, 3)
	e.sim = comsim.NewServer(comsim.Options{Seed: 1})
	t.Cleanup(e.sim.Close)
	e.simURL, e.tokenURL = e.sim.URL(), e.sim.TokenURL()
	return e
}

// TestHotResourceOnCluster: many requests for one template and resource at
// once on replicated buckets, where the in-flight marks' checks against the
// same lock are refused while another is being replicated. Each request
// still ends with exactly one job and one submitted event.
func TestHotResourceOnCluster(t *testing.T) {
	t.Parallel()
	e := newClusterEnv(t, 20)
	const n = 40
	for i := range n {
		e.request(t, "//test/hot", fmt.Sprint(i), "server-inventory", server1, nil)
	}
	cfg := testConfig(20)
	cfg.Workers = 16
	c, _ := e.newConsumer(t, cfg, nil)
	run(t, c)
	e.drained(t, 40*time.Second)
	submittedOnce(t, e, "//test/hot", n)
	if dl := e.deadLetters(t); len(dl) != 0 {
		t.Errorf("%d dead letters, want none", len(dl))
	}
}
