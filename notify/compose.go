package notify

import (
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/comjobs/comjobs/schemas"
)

// action is one message an event asks for.
type action struct {
	m Message
	// job is the event's job (nil for rejected requests).
	job *schemas.JobEvent
	// requester is the request's source, for stalled reminders.
	requester string
	// resolve marks a stalled-resolved reply: thread it under the open
	// STALLED alert and update that alert.
	resolve bool
	// parent is the job's parent, for digests ("" if none).
	parent string
}

// plan decodes an event into the messages it asks for (none is fine).
func (n *Notifier) plan(e event.Event) ([]action, error) {
	requester := extString(e, schemas.ExtRequestSource)
	switch e.Type() {
	case schemas.TypeStateChanged, schemas.TypeSubmitted:
		var j schemas.JobEvent
		if err := json.Unmarshal(e.Data(), &j); err != nil {
			return nil, schemas.Reject(schemas.ReasonInvalidEvent, "data", "job event data: %v", err)
		}
		if j.JobID == "" {
			return nil, schemas.Reject(schemas.ReasonInvalidEvent, "data.jobId", "job event without jobId")
		}
		return n.planJob(e.Type(), &j, requester), nil
	case schemas.TypeOverdue:
		var o schemas.Overdue
		if err := json.Unmarshal(e.Data(), &o); err != nil {
			return nil, schemas.Reject(schemas.ReasonInvalidEvent, "data", "overdue event data: %v", err)
		}
		if o.JobID == "" {
			return nil, schemas.Reject(schemas.ReasonInvalidEvent, "data.jobId", "overdue event without jobId")
		}
		kind := KindOverduePrefix + sanitizeToken(o.Threshold)
		m := n.jobMessage(kind, &o.JobEvent, requester)
		m.Mark, m.Title = MarkOverdue, "OVERDUE"
		m.Fields = append(m.Fields[:4:4], append([]Field{
			{"State", o.State},
			{"Overdue", fmt.Sprintf("in %s for %s (expected within %s)", o.State, fmtDuration(o.ObservedAt.Sub(o.Since)), o.Threshold)},
		}, m.Fields[4:]...)...)
		n.routeJob(&m, &o.JobEvent, true)
		return []action{{m: m, job: &o.JobEvent, requester: requester}}, nil
	case schemas.TypeRejected:
		if n.cfg.NoRejected {
			return nil, nil
		}
		var r schemas.Rejected
		if err := json.Unmarshal(e.Data(), &r); err != nil {
			return nil, schemas.Reject(schemas.ReasonInvalidEvent, "data", "rejected event data: %v", err)
		}
		return []action{{m: n.rejectedMessage(e, &r, requester), requester: requester}}, nil
	default:
		return nil, nil
	}
}

func (n *Notifier) planJob(typ string, j *schemas.JobEvent, requester string) []action {
	var acts []action
	prev := ""
	if j.PreviousState != nil {
		prev = *j.PreviousState
	}
	parent := ""
	if j.ParentJobID != nil {
		parent = *j.ParentJobID
	}
	add := func(m Message, urgent bool, resolve bool) {
		n.routeJob(&m, j, urgent)
		acts = append(acts, action{m: m, job: j, requester: requester, resolve: resolve, parent: parent})
	}
	if typ == schemas.TypeSubmitted {
		if n.cfg.PostSubmitted {
			m := n.jobMessage(KindSubmitted, j, requester)
			m.Mark, m.Title = MarkInfo, "SUBMITTED"
			add(m, false, false)
		}
		return acts
	}
	if prev == schemas.StateStalled && j.State != schemas.StateStalled {
		m := n.jobMessage(KindStalledResolved, j, requester)
		m.Key, m.Ref = m.Key+"."+stalledRef(j.Generation), stalledRef(j.Generation)
		m.Mark, m.Title = MarkResolved, "LEFT STALLED → "+stateTitle(j)
		add(m, false, true)
	}
	switch {
	case j.State == schemas.StateStalled && prev != schemas.StateStalled:
		m := n.jobMessage(KindStalled, j, requester)
		m.Key, m.Ref = stalledKey(j.JobID, j.Generation), stalledRef(j.Generation)
		m.Mark, m.Title = MarkStalled, "STALLED"
		add(m, true, false)
	case schemas.IsTerminal(j.State):
		m := n.jobMessage(KindTerminal, j, requester)
		m.Mark, m.Title = terminalMark(j), stateTitle(j)
		add(m, m.Mark != MarkSuccess, false)
	case j.State == schemas.StateRunning && prev != schemas.StateRunning && n.cfg.PostRunning:
		m := n.jobMessage(KindRunning, j, requester)
		m.Mark, m.Title = MarkInfo, "RUNNING"
		add(m, false, false)
	}
	return acts
}

func (n *Notifier) routeJob(m *Message, j *schemas.JobEvent, urgent bool) {
	f := facts{
		template: TemplateFacts{ID: j.Template.ID, Name: j.Template.Name, Slug: j.Template.Slug},
		state:    j.State,
		result:   deref(j.ResultCode),
		labels:   j.Labels,
	}
	if j.Notify != nil {
		f.channel = j.Notify.SlackChannel
	}
	m.Channel, m.Mention = n.cfg.route(f, urgent)
}

// jobMessage builds the common part of every message about a job.
func (n *Notifier) jobMessage(kind string, j *schemas.JobEvent, requester string) Message {
	name := j.Template.Name
	if name == "" {
		name = j.Template.Slug
	}
	res := j.Resource.Type + " " + j.Resource.ID
	result := deref(j.ResultCode)
	if result == "" {
		result = "—"
	}
	dur := "—"
	if !j.CreatedAt.IsZero() && !j.UpdatedAt.IsZero() && !j.UpdatedAt.Before(j.CreatedAt) {
		dur = fmtDuration(j.UpdatedAt.Sub(j.CreatedAt))
	}
	fields := []Field{
		{"Job", name + " (" + j.JobID + ")"},
		{"Template", j.Template.Slug},
		{"Resource", strings.TrimSpace(res)},
		{"Result", result},
		{"COM status", orDash(j.Status)},
		{"Duration", dur},
		{"Requested by", orDash(requester)},
	}
	if l := fmtLabels(j.Labels); l != "" {
		fields = append(fields, Field{"Labels", l})
	}
	return Message{
		Kind:    kind,
		JobID:   j.JobID,
		Key:     sanitizeToken(j.JobID) + "." + kind,
		Subject: name + " on " + strings.TrimSpace(res),
		Fields:  fields,
		Link:    n.jobLink(j.JobID),
	}
}

func (n *Notifier) rejectedMessage(e event.Event, r *schemas.Rejected, requester string) Message {
	reqID := extString(e, schemas.ExtRequestID)
	key := schemas.RequestKey(requester, reqID)
	if reqID == "" && e.Subject() != "" {
		// A request without a usable identity is rejected under its stream
		// sequence: the consumer puts that key in the event's subject.
		key = e.Subject()
	}
	tmpl := ""
	f := facts{state: "REJECTED", labels: r.Labels}
	if r.Template != nil {
		tmpl = r.Template.Name
		f.template = TemplateFacts{ID: r.Template.ID, Name: r.Template.Name, Slug: r.Template.Slug}
	}
	if r.Notify != nil {
		f.channel = r.Notify.SlackChannel
	}
	subject := "request " + reqID
	if tmpl != "" {
		subject = tmpl + " " + subject
	}
	fields := []Field{
		{"Reason", r.Reason},
		{"Message", r.Message},
	}
	if r.Field != "" {
		fields = append(fields, Field{"Field", r.Field})
	}
	if tmpl != "" {
		fields = append(fields, Field{"Template", tmpl})
	}
	if r.Resource != nil {
		fields = append(fields, Field{"Resource", r.Resource.Type + " " + r.Resource.ID})
	}
	if r.COMError != nil {
		fields = append(fields, Field{"COM error", fmt.Sprintf("%d %s %s", r.COMError.HTTPStatusCode, r.COMError.ErrorCode, r.COMError.Message)})
	}
	fields = append(fields, Field{"Requested by", orDash(requester)}, Field{"Request id", orDash(reqID)})
	if l := fmtLabels(r.Labels); l != "" {
		fields = append(fields, Field{"Labels", l})
	}
	m := Message{
		Kind: KindRejected, JobID: key, Key: key + "." + KindRejected,
		Mark: MarkRejected, Title: "REJECTED", Subject: subject, Fields: fields,
	}
	m.Channel, m.Mention = n.cfg.route(f, false)
	return m
}

// digestMessage summarises many children of parent ending together.
func (n *Notifier) digestMessage(parent, channel string, children []action) Message {
	counts := map[string]int{}
	var failures []string
	tmpl := ""
	for _, a := range children {
		t := stateTitle(a.job)
		counts[t]++
		if tmpl == "" {
			tmpl = a.job.Template.Name
		}
		if terminalMark(a.job) != MarkSuccess && len(failures) < n.cfg.DigestFailures {
			failures = append(failures, fmt.Sprintf("%s %s %s: %s", terminalMark(a.job), a.job.Resource.ID, t, orDash(a.job.Status)))
		}
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fields := make([]Field, 0, len(keys)+1)
	fields = append(fields, Field{"Parent job", parent})
	for _, k := range keys {
		fields = append(fields, Field{k, fmt.Sprint(counts[k])})
	}
	if len(fields) > 10 {
		fields = fields[:10]
	}
	if len(failures) > 0 && counts[schemas.StateComplete+"/"+schemas.ResultSuccess] != len(children) {
		failures = append([]string{"First failures:"}, failures...)
	}
	mark := MarkDigest
	if len(failures) > 0 {
		mark = MarkFailure
	}
	ref := children[0].job.JobID
	return Message{
		Kind: KindDigest, JobID: parent, Key: sanitizeToken(parent) + "." + KindDigest + "-" + sanitizeToken(ref), Ref: ref,
		Channel: channel, Mark: mark,
		Title:   fmt.Sprintf("%d CHILD JOBS ENDED", len(children)),
		Subject: strings.TrimSpace(tmpl + " children of job " + parent),
		Fields:  fields, Lines: failures, Link: n.jobLink(parent),
	}
}

func (n *Notifier) jobLink(id string) string {
	if id == "" {
		return ""
	}
	return n.cfg.JobLinkBase + url.PathEscape(id)
}

func stateTitle(j *schemas.JobEvent) string {
	if r := deref(j.ResultCode); r != "" {
		return j.State + "/" + r
	}
	return j.State
}

func terminalMark(j *schemas.JobEvent) string {
	switch {
	case j.State == schemas.StateComplete && deref(j.ResultCode) == schemas.ResultSuccess:
		return MarkSuccess
	case j.State == schemas.StateComplete:
		return MarkFailure
	case j.State == schemas.StateError:
		return MarkError
	case j.State == schemas.StateLost:
		return MarkLost
	default:
		return MarkInfo
	}
}

func fmtLabels(l map[string]string) string {
	if len(l) == 0 {
		return ""
	}
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ", ")
}

func fmtDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d < time.Minute {
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}

func extString(e event.Event, name string) string {
	v, ok := e.Extensions()[name]
	if !ok {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// sanitizeToken keeps [A-Za-z0-9_-] and turns anything else into "_", so a
// value can be a KV key or subject token.
func sanitizeToken(s string) string {
	if s == "" {
		return "_"
	}
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '_'
		}
	}
	return string(b)
}

// stalledKey is the notification key of the STALLED alert of one episode:
// the job entered STALLED at generation gen. A job that stalls again later
// is a new episode with its own alert.
func stalledKey(jobID string, gen int64) string {
	return sanitizeToken(jobID) + "." + KindStalled + "." + stalledRef(gen)
}

func stalledRef(gen int64) string { return "g" + strconv.FormatInt(gen, 10) }
