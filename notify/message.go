package notify

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Message kinds. A message is identified by (job, kind): the notifier posts at
// most one message per pair in bot-token mode.
const (
	KindTerminal        = "terminal"
	KindStalled         = "stalled"
	KindStalledReminder = "stalled-reminder"
	KindStalledResolved = "stalled-resolved"
	KindOverduePrefix   = "overdue-" // followed by the threshold, e.g. "overdue-1h0m0s"
	KindRejected        = "rejected"
	KindSubmitted       = "submitted"
	KindRunning         = "running"
	KindDigest          = "digest"
)

// Status marks shown in front of a message's title.
const (
	MarkSuccess  = "✅"
	MarkFailure  = "❌"
	MarkError    = "🛑"
	MarkLost     = "❓"
	MarkStalled  = "⚠️"
	MarkOverdue  = "⏰"
	MarkRejected = "🚫"
	MarkInfo     = "ℹ️"
	MarkResolved = "↩️"
	MarkDigest   = "📦"
)

// Field is one labelled value of a message. Name is chosen by comjobs; Value
// usually comes from an event and is untrusted: sinks must escape it.
type Field struct {
	Name  string
	Value string
}

// Message is what the notifier asks a sink to post, before any rendering.
// Every string except Mention and Link may hold event text and must be
// escaped by the sink; Mention is operator-configured Slack syntax (validated
// when the routes are loaded) and Link is a URL built by comjobs with the job
// id path-escaped.
type Message struct {
	// Kind is one of the Kind constants (or KindOverduePrefix+threshold).
	Kind string
	// JobID is the COM job the message is about ("" for a rejected request:
	// then Key is the request key). For a digest it is the parent job.
	JobID string
	// Key identifies the message for dedupe: "<job>.<kind>" before sanitizing.
	Key string
	// Channel is where to post (bot-token mode). Webhook sinks ignore it.
	Channel string
	// ThreadTS, when set, makes the message a reply in that thread.
	ThreadTS string
	// Mark is a status emoji (Mark constants), Title the status words
	// ("COMPLETE/SUCCESS") and Subject what it is about ("Server Power Off on
	// server 875765-S01").
	Mark, Title, Subject string
	// Fields are shown as a grid, in order.
	Fields []Field
	// Lines are extra lines shown under the fields (a digest's failures).
	Lines []string
	// Link points at the job, when known.
	Link string
	// Mention is prepended to the message (e.g. "<!subteam^S123>").
	Mention string
	// Ref is an extra dedupe reference carried in the message metadata (a
	// digest's id), so that a post can be found again in the channel history.
	Ref string
}

// Receipt says where a message landed. TS is empty for sinks that cannot tell
// (incoming webhooks, the console).
type Receipt struct {
	Channel string
	TS      string
}

// Sink posts messages. Notify must be safe for concurrent use and return a
// *Error (or an error wrapping one) so the notifier knows whether to retry,
// dead-letter or pause; any other error is treated as transient.
type Sink interface {
	Notify(ctx context.Context, m Message) (Receipt, error)
}

// Threader is implemented by sinks that can reply in threads, edit a posted
// message and look a message up again (Slack in bot-token mode). Find looks
// for a message about (jobID, kind, ref) posted to channel (in the thread
// threadTS, when set), using the metadata attached by Notify; it reports
// found=false when there is none.
type Threader interface {
	Update(ctx context.Context, at Receipt, m Message) error
	Find(ctx context.Context, channel, threadTS, jobID, kind, ref string) (r Receipt, found bool, err error)
}

// Prober is implemented by sinks that can check their setup without posting
// (Slack auth.test). The notifier probes while paused by a broken setup.
type Prober interface {
	Probe(ctx context.Context) error
}

// ErrorClass says what the notifier should do about a failed post.
type ErrorClass int

const (
	// Transient failures are retried with backoff (5xx, network, rate limit).
	Transient ErrorClass = iota
	// Permanent failures will never succeed: the event is dead-lettered.
	Permanent
	// Setup failures mean the sink is misconfigured (bad token): the
	// notifier pauses and keeps events queued.
	Setup
)

func (c ErrorClass) String() string {
	switch c {
	case Permanent:
		return "permanent"
	case Setup:
		return "setup"
	default:
		return "transient"
	}
}

// Error is a classified sink failure. Reason is short and safe to log and to
// use in a dead-letter subject (e.g. "channel_not_found"); it never holds a
// secret. RetryAfter, when positive, is how long the destination asked to be
// left alone.
type Error struct {
	Class      ErrorClass
	Reason     string
	RetryAfter time.Duration
	// Unsent reports that the destination certainly did not take the
	// message (it answered with an error), so a retry cannot duplicate it.
	Unsent bool
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s (%s): %v", e.Reason, e.Class, e.Err)
	}
	return fmt.Sprintf("%s (%s)", e.Reason, e.Class)
}

func (e *Error) Unwrap() error { return e.Err }

// classify returns the *Error in err, or a transient one.
func classify(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Class: Transient, Reason: "error", Err: err}
}
