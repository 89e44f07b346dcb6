package tracker

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/comjobs/comjobs/com"
)

// Config tunes a Tracker. Zero values take the documented defaults; Validate
// names the first bad field.
type Config struct {
	// Instance names this replica in the lease and in logs (default: a
	// random id).
	Instance string
	// PollInterval is the base interval (default 10s). The v1 list cycle
	// runs at this interval (three times slower when webhooks are on); the
	// per-job interval of a template is ExpectedDuration/20 clamped to
	// [PollInterval/2, MaxInterval], with ±10% jitter.
	PollInterval time.Duration
	// MaxInterval caps the per-job interval (default 30 × PollInterval).
	MaxInterval time.Duration
	// CheckFactor: in v1 mode a tracked job not seen in a list for
	// CheckFactor × its interval is checked, which also finds jobs COM
	// deleted (default 10). Checks go 50 jobs to a call, one call a list
	// cycle, longest due first: with more jobs due than that, each is
	// checked less often than CheckFactor says.
	CheckFactor int
	// ListMargin is subtracted from the watermark of v1 list calls to
	// cover list lag inside COM and skew between the clock of its Date
	// header and that of its updatedAt stamps (default 30s).
	ListMargin time.Duration
	// LeaseTTL is how long the poll lease lives without renewal (default
	// 1.5 × PollInterval, so a replica takes over from a dead one within
	// two poll intervals). It is renewed every LeaseTTL/3.
	LeaseTTL time.Duration
	// OverdueFactors are multiples of a template's expected duration after
	// which a job still PENDING, APPROVAL_PENDING or RUNNING gets a
	// comjobs.job.overdue event, one per threshold (default 1, 2, 4).
	OverdueFactors []float64
	// Overdue overrides the thresholds per template slug.
	Overdue map[string][]time.Duration
	// WebhookSecret, when set, enables WebhookHandler: deliveries must carry
	// it in the WebhookSecretHeader header.
	WebhookSecret string
	// Workers bounds concurrent observations and per-job COM reads (default 8).
	Workers int
}

// WebhookSecretHeader is the header COM webhooks must carry the shared secret in
// (configure it in the webhook's "headers").
const WebhookSecretHeader = "X-Comjobs-Webhook-Secret"

func (c *Config) defaults() {
	if c.Instance == "" {
		c.Instance = fmt.Sprintf("tracker-%08x", rand.Uint32())
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 10 * time.Second
	}
	if c.MaxInterval <= 0 {
		c.MaxInterval = 30 * c.PollInterval
	}
	if c.CheckFactor <= 0 {
		c.CheckFactor = 10
	}
	if c.ListMargin <= 0 {
		c.ListMargin = 30 * time.Second
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = c.PollInterval * 3 / 2
	}
	if len(c.OverdueFactors) == 0 {
		c.OverdueFactors = []float64{1, 2, 4}
	}
	if c.Workers <= 0 {
		c.Workers = 8
	}
}

// Validate reports the first bad field, after defaults are applied.
func (c Config) Validate() error {
	c.defaults()
	switch {
	case c.PollInterval < time.Millisecond:
		return errors.New("tracker: PollInterval must be at least 1ms")
	case c.MaxInterval < c.PollInterval/2:
		return fmt.Errorf("tracker: MaxInterval %s must be at least half of PollInterval %s", c.MaxInterval, c.PollInterval)
	case c.LeaseTTL < c.PollInterval/2:
		return fmt.Errorf("tracker: LeaseTTL %s must be at least half of PollInterval %s", c.LeaseTTL, c.PollInterval)
	}
	for _, f := range c.OverdueFactors {
		if f <= 0 {
			return fmt.Errorf("tracker: OverdueFactors: %v is not positive", f)
		}
	}
	for slug, ds := range c.Overdue {
		for _, d := range ds {
			if d <= 0 {
				return fmt.Errorf("tracker: Overdue[%s]: %s is not positive", slug, d)
			}
		}
	}
	return nil
}

// interval is how often a job of the template with slug is read on its own.
func (c Config) interval(slug string) time.Duration {
	d := c.PollInterval
	if t, ok := com.Lookup(slug); ok && t.ExpectedDuration > 0 {
		d = t.ExpectedDuration / 20
	}
	d = max(c.PollInterval/2, min(d, c.MaxInterval))
	if c.WebhookSecret != "" {
		d *= 3
	}
	return d
}

// jitter spreads d by ±10%.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d + time.Duration((rand.Float64()*0.2-0.1)*float64(d))
}

// thresholds are the overdue thresholds of the template with slug, ascending.
func (c Config) thresholds(slug string) []time.Duration {
	if ds, ok := c.Overdue[slug]; ok {
		return ds
	}
	t, ok := com.Lookup(slug)
	if !ok || t.ExpectedDuration <= 0 {
		return nil
	}
	out := make([]time.Duration, 0, len(c.OverdueFactors))
	for _, f := range c.OverdueFactors {
		out = append(out, time.Duration(f*float64(t.ExpectedDuration)))
	}
	return out
}
