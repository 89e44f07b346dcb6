// Package slack is the notifier's Slack sink, in both of Slack's modes: a
// bot token (chat.postMessage with message metadata, threads, chat.update,
// conversations.history to find a message again) and an incoming webhook
// (one fixed channel, no threads, no updates, no ts: at-least-once only).
// It renders notify.Message as Block Kit with every piece of event text
// escaped, and maps every Slack failure to a notify.Error class once, here.
// Tokens and webhook URLs never appear in the errors it returns.
package slack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/comjobs/comjobs/notify"
)

// DefaultAPIURL is Slack's Web API base.
const DefaultAPIURL = "https://slack.com/api/"

// MetadataEventType is the event_type of the metadata every bot message
// carries (payload: job_id, kind, ref).
const MetadataEventType = "comjobs_notification"

// Bot posts with a bot token through the Web API. It implements
// notify.Sink, notify.Threader, notify.Prober and notify.Describer, and is
// safe for concurrent use.
type Bot struct {
	api    *slack.Client
	secret string
}

var (
	_ notify.Sink      = (*Bot)(nil)
	_ notify.Threader  = (*Bot)(nil)
	_ notify.Prober    = (*Bot)(nil)
	_ notify.Describer = (*Bot)(nil)
)

// NewBot builds a bot-token sink. apiURL is the Web API base (COMJOBS_SLACK_API_URL,
// default DefaultAPIURL; a missing trailing slash is added, as slack-go
// appends method names to it). hc is the HTTP client (nil: one with a 30 s
// timeout).
func NewBot(token, apiURL string, hc *http.Client) (*Bot, error) {
	if token == "" {
		return nil, errors.New("COMJOBS_SLACK_TOKEN: empty")
	}
	if apiURL == "" {
		apiURL = DefaultAPIURL
	}
	if !strings.HasPrefix(apiURL, "http://") && !strings.HasPrefix(apiURL, "https://") {
		return nil, errors.New("COMJOBS_SLACK_API_URL: must be an http(s) URL")
	}
	if !strings.HasSuffix(apiURL, "/") {
		apiURL += "/"
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Bot{api: slack.New(token, slack.OptionAPIURL(apiURL), slack.OptionHTTPClient(hc)), secret: token}, nil
}

// Describe implements notify.Describer.
func (b *Bot) Describe() notify.SinkInfo { return notify.SinkInfo{Name: "slack"} }

// Notify posts m to m.Channel (in the thread m.ThreadTS if set) with
// metadata naming the job and kind, and returns the channel id and ts.
func (b *Bot) Notify(ctx context.Context, m notify.Message) (notify.Receipt, error) {
	blocks, text := Render(m)
	opts := []slack.MsgOption{
		slack.MsgOptionBlocks(blocks...),
		slack.MsgOptionText(text, false),
		slack.MsgOptionDisableLinkUnfurl(),
		slack.MsgOptionMetadata(metadata(m)),
	}
	if m.ThreadTS != "" {
		opts = append(opts, slack.MsgOptionTS(m.ThreadTS))
	}
	ch, ts, err := b.api.PostMessageContext(ctx, m.Channel, opts...)
	if err != nil {
		return notify.Receipt{}, classify("chat.postMessage", err, b.secret)
	}
	return notify.Receipt{Channel: ch, TS: ts}, nil
}

// Update replaces the message at `at` with m (chat.update).
func (b *Bot) Update(ctx context.Context, at notify.Receipt, m notify.Message) error {
	blocks, text := Render(m)
	_, _, _, err := b.api.UpdateMessageContext(ctx, at.Channel, at.TS,
		slack.MsgOptionBlocks(blocks...), slack.MsgOptionText(text, false), slack.MsgOptionMetadata(metadata(m)))
	if err != nil {
		return classify("chat.update", err, b.secret)
	}
	return nil
}

// Find looks through the channel's recent history (or the thread's
// replies) for a message whose metadata names jobID, kind and ref.
func (b *Bot) Find(ctx context.Context, channel, threadTS, jobID, kind, ref string) (notify.Receipt, bool, error) {
	cursor := ""
	for range 5 {
		var msgs []slack.Message
		var next string
		if threadTS != "" {
			replies, more, nc, err := b.api.GetConversationRepliesContext(ctx, &slack.GetConversationRepliesParameters{
				ChannelID: channel, Timestamp: threadTS, Cursor: cursor, Limit: 200, IncludeAllMetadata: true,
			})
			if err != nil {
				return notify.Receipt{}, false, classify("conversations.replies", err, b.secret)
			}
			msgs = replies
			if more {
				next = nc
			}
		} else {
			h, err := b.api.GetConversationHistoryContext(ctx, &slack.GetConversationHistoryParameters{
				ChannelID: channel, Cursor: cursor, Limit: 200, IncludeAllMetadata: true,
			})
			if err != nil {
				return notify.Receipt{}, false, classify("conversations.history", err, b.secret)
			}
			msgs = h.Messages
			if h.HasMore {
				next = h.ResponseMetaData.NextCursor
			}
		}
		for _, msg := range msgs {
			md := msg.Metadata
			if md.EventType != MetadataEventType {
				continue
			}
			if fmt.Sprint(md.EventPayload["job_id"]) == jobID && fmt.Sprint(md.EventPayload["kind"]) == kind &&
				(ref == "" || fmt.Sprint(md.EventPayload["ref"]) == ref) {
				return notify.Receipt{Channel: firstNonEmpty(msg.Channel, channel), TS: msg.Timestamp}, true, nil
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	return notify.Receipt{}, false, nil
}

// Probe checks the token with auth.test.
func (b *Bot) Probe(ctx context.Context) error {
	if _, err := b.api.AuthTestContext(ctx); err != nil {
		return classify("auth.test", err, b.secret)
	}
	return nil
}

func metadata(m notify.Message) slack.SlackMetadata {
	p := map[string]any{"job_id": m.JobID, "kind": m.Kind}
	if m.Ref != "" {
		p["ref"] = m.Ref
	}
	return slack.SlackMetadata{EventType: MetadataEventType, EventPayload: p}
}

// Webhook posts to an incoming webhook. It cannot choose a channel or a
// thread, edit a message or learn its ts, so it implements only notify.Sink
// and notify.Describer: the notifier then delivers at least once.
type Webhook struct {
	url string
	hc  *http.Client
}

var (
	_ notify.Sink      = (*Webhook)(nil)
	_ notify.Describer = (*Webhook)(nil)
)

// NewWebhook builds an incoming-webhook sink (COMJOBS_SLACK_WEBHOOK_URL).
func NewWebhook(webhookURL string, hc *http.Client) (*Webhook, error) {
	if !strings.HasPrefix(webhookURL, "https://") && !strings.HasPrefix(webhookURL, "http://") {
		return nil, errors.New("COMJOBS_SLACK_WEBHOOK_URL: must be an http(s) URL")
	}
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Webhook{url: webhookURL, hc: hc}, nil
}

// Describe implements notify.Describer.
func (w *Webhook) Describe() notify.SinkInfo {
	return notify.SinkInfo{Name: "slack-webhook", OneChannel: true}
}

// Notify posts m to the webhook's channel; the receipt has no ts.
func (w *Webhook) Notify(ctx context.Context, m notify.Message) (notify.Receipt, error) {
	blocks, text := Render(m)
	msg := &slack.WebhookMessage{Text: text, Blocks: &slack.Blocks{BlockSet: blocks}}
	if err := slack.PostWebhookCustomHTTPContext(ctx, w.url, w.hc, msg); err != nil {
		return notify.Receipt{}, classify("incoming webhook", err, w.url)
	}
	return notify.Receipt{}, nil
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Slack error codes by what they mean for the notifier.
var (
	permanentErrors = map[string]bool{
		"channel_not_found": true, "not_in_channel": true, "invalid_blocks": true, "invalid_blocks_format": true,
		"msg_too_long": true, "is_archived": true, "no_text": true, "too_many_attachments": true,
		"restricted_action": true, "cannot_reply_to_message": true, "message_not_found": true,
		"cant_update_message": true, "edit_window_closed": true, "invalid_metadata_format": true,
		"invalid_metadata_schema": true, "metadata_too_large": true, "duplicate_channel_not_found": true,
		"invalid_arguments": true, "channel_is_archived": true,
	}
	setupErrors = map[string]bool{
		"invalid_auth": true, "token_revoked": true, "account_inactive": true, "not_authed": true,
		"token_expired": true, "missing_scope": true, "no_permission": true, "ekm_access_denied": true,
		"org_login_required": true, "team_access_not_granted": true, "not_allowed_token_type": true,
	}
)

// classify maps a slack-go error to a *notify.Error, with secret scrubbed
// from every text.
func classify(op string, err error, secret string) error {
	scrubbed := errors.New(scrub(op+": "+err.Error(), secret))
	var rl *slack.RateLimitedError
	if errors.As(err, &rl) {
		return &notify.Error{Class: notify.Transient, Reason: "ratelimited", RetryAfter: max(rl.RetryAfter, time.Second), Unsent: true, Err: scrubbed}
	}
	var se slack.SlackErrorResponse
	if errors.As(err, &se) {
		code := se.Err
		switch {
		case permanentErrors[code]:
			return &notify.Error{Class: notify.Permanent, Reason: code, Unsent: true, Err: scrubbed}
		case setupErrors[code]:
			return &notify.Error{Class: notify.Setup, Reason: code, Unsent: true, Err: scrubbed}
		case code == "ratelimited":
			return &notify.Error{Class: notify.Transient, Reason: code, RetryAfter: time.Second, Unsent: true, Err: scrubbed}
		default:
			return &notify.Error{Class: notify.Transient, Reason: reasonToken(code), Unsent: true, Err: scrubbed}
		}
	}
	var sc slack.StatusCodeError
	if errors.As(err, &sc) {
		switch {
		case sc.Code == http.StatusTooManyRequests:
			return &notify.Error{Class: notify.Transient, Reason: "ratelimited", RetryAfter: time.Second, Unsent: true, Err: scrubbed}
		case sc.Code == http.StatusForbidden || sc.Code == http.StatusNotFound || sc.Code == http.StatusGone || sc.Code == http.StatusUnauthorized:
			return &notify.Error{Class: notify.Setup, Reason: fmt.Sprintf("http_%d", sc.Code), Unsent: true, Err: scrubbed}
		case sc.Code == http.StatusBadRequest || sc.Code == http.StatusRequestEntityTooLarge:
			return &notify.Error{Class: notify.Permanent, Reason: fmt.Sprintf("http_%d", sc.Code), Unsent: true, Err: scrubbed}
		default:
			return &notify.Error{Class: notify.Transient, Reason: fmt.Sprintf("http_%d", sc.Code), Err: scrubbed}
		}
	}
	return &notify.Error{Class: notify.Transient, Reason: "network", Err: scrubbed}
}

// scrub removes secret (and, for URLs, their path) from s.
func scrub(s, secret string) string {
	if secret == "" {
		return s
	}
	s = strings.ReplaceAll(s, secret, "[redacted]")
	if i := strings.Index(secret, "://"); i >= 0 {
		if j := strings.Index(secret[i+3:], "/"); j >= 0 {
			if p := secret[i+3+j:]; len(p) > 1 {
				s = strings.ReplaceAll(s, p, "/[redacted]")
			}
		}
	}
	return s
}

func reasonToken(code string) string {
	var b strings.Builder
	for _, r := range code {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "slack_error"
	}
	return b.String()
}
