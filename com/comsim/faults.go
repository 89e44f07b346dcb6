package comsim

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Faults are the misbehaviours the simulator adds to the jobs API (never to
// the token endpoint). Every draw comes from one generator seeded by
// Options.Seed, so the same sequence of calls meets the same faults.
type Faults struct {
	// Rate429 is the share (0..1) of calls answered 429 with rate-limit
	// headers, as if the budget were spent.
	Rate429 float64
	// Rate5xx is the share of calls answered 500, 502 (HTML body, as from a
	// gateway) or 503, before the request has any effect.
	Rate5xx float64
	// RateDrop is the share of calls whose request is processed (a POST does
	// create its job) and whose connection is then closed with no answer.
	RateDrop float64
	// RateSlow is the share of calls delayed by SlowBy (default 2s) before
	// they are served; the delay ends early if the client goes away.
	RateSlow float64
	SlowBy   time.Duration
	// RateLimit is the real budget: calls allowed per RateWindow (default
	// one minute); over it, 429. 0 means unlimited, and the headers then
	// report a nominal limit of UnlimitedRate.
	RateLimit  int
	RateWindow time.Duration
}

// UnlimitedRate is the ratelimit-limit reported when Faults.RateLimit is 0.
const UnlimitedRate = 1_000_000

// faultKind is what one call meets.
type faultKind int

const (
	faultNone faultKind = iota
	fault429
	fault500
	fault502
	fault503
	faultDrop
)

// faults draws faults and keeps the rate-limit window. Safe for concurrent use.
type faults struct {
	mu          sync.Mutex
	cfg         Faults
	rng         *rand.Rand
	windowStart time.Time
	used        int
}

func newFaults(cfg Faults, seed int64) *faults {
	return &faults{cfg: cfg, rng: rand.New(rand.NewPCG(uint64(seed), 0x636f6d73696d))}
}

func (f *faults) set(cfg Faults) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cfg = cfg
}

// rateState is what the rate-limit headers of one answer say.
type rateState struct {
	limit, remaining int
	reset            time.Duration
	over             bool
}

// draw accounts one call at now and says what it meets: a fault, a delay,
// and the rate-limit headers to send.
func (f *faults) draw(now time.Time) (faultKind, time.Duration, rateState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	window := f.cfg.RateWindow
	if window <= 0 {
		window = time.Minute
	}
	limit := f.cfg.RateLimit
	if limit <= 0 {
		limit = UnlimitedRate
	}
	if f.windowStart.IsZero() || now.Sub(f.windowStart) >= window {
		f.windowStart, f.used = now, 0
	}
	rs := rateState{limit: limit, reset: window - now.Sub(f.windowStart)}
	if f.used >= limit {
		rs.over = true
	} else {
		f.used++
	}
	rs.remaining = limit - f.used
	// Draw every share on every call, so the sequence does not depend on
	// which fault fired before.
	p429, p5xx, pDrop, pSlow, which := f.rng.Float64(), f.rng.Float64(), f.rng.Float64(), f.rng.Float64(), f.rng.IntN(3)
	var delay time.Duration
	if pSlow < f.cfg.RateSlow {
		delay = f.cfg.SlowBy
		if delay <= 0 {
			delay = 2 * time.Second
		}
	}
	switch {
	case rs.over:
		return fault429, delay, rs
	case p429 < f.cfg.Rate429:
		rs.over, rs.remaining = true, 0
		return fault429, delay, rs
	case p5xx < f.cfg.Rate5xx:
		return []faultKind{fault500, fault502, fault503}[which], delay, rs
	case pDrop < f.cfg.RateDrop:
		return faultDrop, delay, rs
	}
	return faultNone, delay, rs
}

// float draws one number in [0,1) from the seeded generator (webhook
// shuffling uses it).
func (f *faults) float() float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rng.Float64()
}
