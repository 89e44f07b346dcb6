package notify

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/comjobs/comjobs/schemas"
)

// Config tunes the notifier. The zero value of every field takes the default
// documented on it; Validate names the bad field.
type Config struct {
	// DefaultChannel receives every message no rule or request routes
	// elsewhere (COMJOBS_SLACK_CHANNEL). Required unless the sink ignores
	// channels (webhook, console), where it defaults to "default".
	DefaultChannel string
	// Routes are optional routing rules, first match wins; see LoadRoutes.
	Routes []Route
	// PostSubmitted and PostRunning switch on messages for submitted jobs and
	// jobs starting to run (default off).
	PostSubmitted, PostRunning bool
	// NoRejected switches off messages for rejected requests (default on).
	NoRejected bool
	// JobLinkBase is the prefix of a job's link; the job id is appended
	// (default "https://console.greenlake.hpe.com/compute-ops-mgmt/jobs/").
	JobLinkBase string
	// StalledRepeat is how often a reminder is posted while a job stays
	// STALLED (COMJOBS_STALLED_REPEAT, default 1h).
	StalledRepeat time.Duration
	// ChannelInterval paces posts to one channel (default 1s: Slack's one
	// message per second per channel).
	ChannelInterval time.Duration
	// DigestWindow is how long child-job events of one parent are gathered
	// before deciding on a digest (default 2s); DigestThreshold is how many
	// must arrive within it to be digested (default 5: more than 5 → digest).
	DigestWindow    time.Duration
	DigestThreshold int
	// DigestFailures is how many failed children a digest lists (default 10).
	DigestFailures int
	// ClaimTimeout is how old a claim without a ts must be before the
	// notifier assumes its poster died and settles it from the channel
	// history (default 30s).
	ClaimTimeout time.Duration
	// ProbeInterval is how often a paused notifier checks whether its sink
	// works again (default 30s).
	ProbeInterval time.Duration
	// Workers is how many events are handled concurrently (default 32). A
	// worker waiting for its channel's pacing slot holds on to its event,
	// so there are enough of them that a burst for one channel does not
	// hold back the others.
	Workers int
	// MaxBackoff caps the redelivery delay of transient failures (default 1m).
	MaxBackoff time.Duration
}

// Defaults used by Config.
const (
	DefaultJobLinkBase     = "https://console.greenlake.hpe.com/compute-ops-mgmt/jobs/"
	DefaultStalledRepeat   = time.Hour
	DefaultChannelInterval = time.Second
	DefaultDigestWindow    = 2 * time.Second
	DefaultDigestThreshold = 5
)

func (c *Config) defaults() {
	if c.JobLinkBase == "" {
		c.JobLinkBase = DefaultJobLinkBase
	}
	if c.StalledRepeat <= 0 {
		c.StalledRepeat = DefaultStalledRepeat
	}
	if c.ChannelInterval <= 0 {
		c.ChannelInterval = DefaultChannelInterval
	}
	if c.DigestWindow <= 0 {
		c.DigestWindow = DefaultDigestWindow
	}
	if c.DigestThreshold <= 0 {
		c.DigestThreshold = DefaultDigestThreshold
	}
	if c.DigestFailures <= 0 {
		c.DigestFailures = 10
	}
	if c.ClaimTimeout <= 0 {
		c.ClaimTimeout = 30 * time.Second
	}
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = 30 * time.Second
	}
	if c.Workers <= 0 {
		c.Workers = 32
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = time.Minute
	}
}

// Validate checks c, naming the bad setting.
func (c Config) Validate() error {
	var errs []error
	for i, r := range c.Routes {
		if err := r.validate(); err != nil {
			errs = append(errs, fmt.Errorf("routes[%d]: %w", i, err))
		}
	}
	if c.JobLinkBase != "" && !strings.HasPrefix(c.JobLinkBase, "https://") && !strings.HasPrefix(c.JobLinkBase, "http://") {
		errs = append(errs, fmt.Errorf("JobLinkBase %q: must be an http(s) URL", c.JobLinkBase))
	}
	if c.StalledRepeat < 0 {
		errs = append(errs, errors.New("COMJOBS_STALLED_REPEAT: must not be negative"))
	}
	return errors.Join(errs...)
}

// Route is one routing rule. Every set matcher must match (labels: every
// listed label equal); an empty rule matches everything. Channel, when set,
// replaces the default channel (a request's own notify.slackChannel still
// wins); Mention, when set, is prepended to failure and STALLED messages.
type Route struct {
	Template string            `json:"template,omitempty"` // template slug, name or id
	State    string            `json:"state,omitempty"`    // e.g. "ERROR", "STALLED"
	Result   string            `json:"result,omitempty"`   // "SUCCESS" / "FAILURE"
	Labels   map[string]string `json:"labels,omitempty"`
	Channel  string            `json:"channel,omitempty"`
	Mention  string            `json:"mention,omitempty"`
}

// mentionRE accepts Slack's user, user-group and special mentions only.
var mentionRE = regexp.MustCompile(`^(<(@[UW][A-Z0-9]+|!subteam\^[A-Z0-9]+|!here|!channel)>)( <(@[UW][A-Z0-9]+|!subteam\^[A-Z0-9]+|!here|!channel)>)*$`)

func (r Route) validate() error {
	if r.Mention != "" && !mentionRE.MatchString(r.Mention) {
		return fmt.Errorf("mention %q: want Slack mention syntax like <!subteam^S0123> or <@U0123>", r.Mention)
	}
	if r.Channel == "" && r.Mention == "" {
		return errors.New("needs a channel or a mention")
	}
	if strings.ContainsAny(r.Channel, " <>&") {
		return fmt.Errorf("channel %q: not a channel name or id", r.Channel)
	}
	return nil
}

// LoadRoutes reads a routes file: {"routes": [Route, ...]}.
func LoadRoutes(path string) ([]Route, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read routes: %w", err)
	}
	var f struct {
		Routes []Route `json:"routes"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("routes file %s: %w", path, err)
	}
	for i, r := range f.Routes {
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("routes file %s: routes[%d]: %w", path, i, err)
		}
	}
	return f.Routes, nil
}

// facts are what routing matches on.
type facts struct {
	template TemplateFacts
	state    string
	result   string
	labels   map[string]string
	channel  string // the request's own notify.slackChannel
}

// TemplateFacts names a template for matching.
type TemplateFacts struct{ ID, Name, Slug string }

func (r Route) matches(f facts) bool {
	if r.Template != "" {
		t := r.Template
		if !strings.EqualFold(t, f.template.Slug) && !strings.EqualFold(t, f.template.Name) && !strings.EqualFold(t, f.template.ID) && schemas.Slug(t) != f.template.Slug {
			return false
		}
	}
	if r.State != "" && !strings.EqualFold(r.State, f.state) {
		return false
	}
	if r.Result != "" && !strings.EqualFold(r.Result, f.result) {
		return false
	}
	for k, v := range r.Labels {
		if f.labels[k] != v {
			return false
		}
	}
	return true
}

// route picks the channel and the mention of a message: the request's own
// channel, else the first matching rule with a channel, else the default;
// the mention of the first matching rule with one, if urgent.
func (c *Config) route(f facts, urgent bool) (channel, mention string) {
	channel = f.channel
	for _, r := range c.Routes {
		if !r.matches(f) {
			continue
		}
		if channel == "" && r.Channel != "" {
			channel = r.Channel
		}
		if mention == "" && r.Mention != "" && urgent {
			mention = r.Mention
		}
	}
	if channel == "" {
		channel = c.DefaultChannel
	}
	return channel, mention
}
