package schemas

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"
	"time"
)

// Event types, as fixed by the design contract.
const (
	TypeRequested    = "comjobs.job.requested"
	TypeSubmitted    = "comjobs.job.submitted"
	TypeRejected     = "comjobs.job.rejected"
	TypeStateChanged = "comjobs.job.state-changed"
	TypeOverdue      = "comjobs.job.overdue"
)

// CloudEvent extension attributes carried by every event comjobs publishes
// about a request.
const (
	ExtRequestID     = "requestid"
	ExtRequestSource = "requestsource"
	ExtTraceParent   = "traceparent"
)

// Subject prefixes and stream, bucket and durable names.
const (
	SubjectRequests = "comjobs.requests" // comjobs.requests.<template-slug>
	SubjectEvents   = "comjobs.events"   // comjobs.events.<kind>.<template-slug>
	SubjectDLQ      = "comjobs.dlq"      // comjobs.dlq.<role>.<reason>
	SubjectControl  = "comjobs.control"  // pause/resume commands

	StreamRequests = "COMJOBS_REQUESTS"
	StreamEvents   = "COMJOBS_EVENTS"
	StreamDLQ      = "COMJOBS_DLQ"

	BucketLedger   = "comjobs-ledger"
	BucketJobs     = "comjobs-jobs"
	BucketNotified = "comjobs-notified"

	DurableConsumer = "consumer"
	DurableTracker  = "tracker"
	DurableNotifier = "notifier"
)

// Pseudo and real job states. Unknown states are carried through as strings.
const (
	StatePending         = "PENDING"
	StateApprovalPending = "APPROVAL_PENDING"
	StateRunning         = "RUNNING"
	StateStalled         = "STALLED"
	StateError           = "ERROR"
	StateComplete        = "COMPLETE"
	// StateLost is comjobs' terminal pseudo-state for a job COM no longer
	// knows (404 while tracked).
	StateLost = "LOST"
)

// Result codes as COM reports them (nil while a job is not terminal).
const (
	ResultSuccess = "SUCCESS"
	ResultFailure = "FAILURE"
)

// IsTerminal reports whether state ends a job: COMPLETE, ERROR or LOST.
// STALLED is not terminal: it needs a person.
func IsTerminal(state string) bool {
	return state == StateComplete || state == StateError || state == StateLost
}

// RequestKey is the identity of a request everywhere (ledger, Nats-Msg-Id,
// DLQ): the hex SHA-256 of source, a newline, and id.
func RequestKey(source, id string) string {
	h := sha256.New()
	h.Write([]byte(source))
	h.Write([]byte{'\n'})
	h.Write([]byte(id))
	return hex.EncodeToString(h.Sum(nil))
}

// Slug turns a name into kebab case. A display name (one with spaces) is
// lower-cased word by word: "Server iLO Firmware Update" →
// "server-ilo-firmware-update". A name without spaces is taken as
// CamelCase and split at its humps: "GroupFirmwareCompliance" →
// "group-firmware-compliance", "FirmwareUpdate.New" → "firmware-update-new".
// The result holds only [a-z0-9-], with no leading, trailing or doubled
// dashes; an empty or unusable name gives "unknown".
func Slug(name string) string {
	camel := !strings.ContainsAny(strings.TrimSpace(name), " \t")
	var b strings.Builder
	dash := false
	prevLowerOrDigit := false
	for _, r := range name {
		switch {
		case r >= 'A' && r <= 'Z':
			if camel && prevLowerOrDigit && !dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(r + ('a' - 'A'))
			dash, prevLowerOrDigit = false, false
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
			dash, prevLowerOrDigit = false, true
		default:
			if !dash && b.Len() > 0 {
				b.WriteByte('-')
				dash = true
			}
			prevLowerOrDigit = false
		}
	}
	s := strings.Trim(b.String(), "-")
	if s == "" {
		return "unknown"
	}
	return s
}

// StateToken is the subject token of a state: lower-cased, "_" → "-", anything
// outside [a-z0-9-] dropped ("APPROVAL_PENDING" → "approval-pending").
func StateToken(state string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(state) {
		switch {
		case r == '_':
			b.WriteByte('-')
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-':
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "unknown"
	}
	return b.String()
}

// RequestSubject is the subject a request for the template slug is published on.
func RequestSubject(slug string) string { return SubjectRequests + "." + slug }

// SubmittedSubject, RejectedSubject, StateSubject and OverdueSubject are the
// subjects of the events comjobs publishes.
func SubmittedSubject(slug string) string { return SubjectEvents + ".submitted." + slug }
func RejectedSubject(slug string) string  { return SubjectEvents + ".rejected." + slug }
func StateSubject(state, slug string) string {
	return SubjectEvents + "." + StateToken(state) + "." + slug
}
func OverdueSubject(slug string) string { return SubjectEvents + ".overdue." + slug }

// DLQSubject is where a dead letter of role for reason is kept.
func DLQSubject(role, reason string) string { return SubjectDLQ + "." + role + "." + reason }

// Resource names a COM resource in v1 form.
type Resource struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

// Notify is a request's own notification routing.
type Notify struct {
	SlackChannel string `json:"slackChannel,omitempty"`
}

// Request is the data of a comjobs.job.requested event.
type Request struct {
	// Template is the template's display name, slug, CamelCase name or UUID, any case.
	Template string `json:"template"`
	// ResourceURI is the seed-style resource, e.g. /compute-ops-mgmt/v1beta2/servers/<id>.
	ResourceURI string `json:"resourceUri,omitempty"`
	// Resource is the v1-style resource. Exactly one of ResourceURI and Resource is set.
	Resource *Resource `json:"resource,omitempty"`
	// Data holds the job's parameters; nil means {}.
	Data      map[string]any    `json:"data,omitempty"`
	Notify    *Notify           `json:"notify,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	ExpiresAt *time.Time        `json:"expiresAt,omitempty"`
}

// TemplateRef names a job template in events.
type TemplateRef struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Slug string `json:"slug"`
}

// JobEvent is the data of comjobs.job.submitted and comjobs.job.state-changed
// events. For submitted events PreviousState is nil and State is what COM's
// create answer said.
type JobEvent struct {
	JobID         string            `json:"jobId"`
	JobURI        string            `json:"jobUri"`
	ParentJobID   *string           `json:"parentJobId"`
	Template      TemplateRef       `json:"template"`
	Resource      Resource          `json:"resource"`
	PreviousState *string           `json:"previousState"`
	State         string            `json:"state"`
	ResultCode    *string           `json:"resultCode"`
	Status        string            `json:"status"`
	StatusDetails json.RawMessage   `json:"statusDetails,omitempty"`
	Terminal      bool              `json:"terminal"`
	Generation    int64             `json:"generation"`
	CreatedAt     time.Time         `json:"createdAt"`
	UpdatedAt     time.Time         `json:"updatedAt"`
	ObservedAt    time.Time         `json:"observedAt"`
	Labels        map[string]string `json:"labels,omitempty"`
	Notify        *Notify           `json:"notify,omitempty"`
}

// Overdue is the data of a comjobs.job.overdue event: the job as last
// observed, and the threshold it outlived.
type Overdue struct {
	JobEvent
	// Threshold is the expected duration that was exceeded, as a Go duration string.
	Threshold string `json:"threshold"`
	// Since is when the job entered its current state (or was created).
	Since time.Time `json:"since"`
}

// Rejected is the data of a comjobs.job.rejected event.
type Rejected struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// Field names the offending field (e.g. "data.batch_size"), when one is to blame.
	Field    string       `json:"field,omitempty"`
	Template *TemplateRef `json:"template,omitempty"`
	Resource *Resource    `json:"resource,omitempty"`
	// Subject and StreamSeq locate the rejected request message.
	Subject   string `json:"subject"`
	StreamSeq uint64 `json:"streamSeq,omitempty"`
	// COMError is COM's error body, for reason com-rejected.
	COMError   *COMError         `json:"comError,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Notify     *Notify           `json:"notify,omitempty"`
	RejectedAt time.Time         `json:"rejectedAt"`
}

// COMError is COM's error body.
type COMError struct {
	HTTPStatusCode int    `json:"httpStatusCode"`
	ErrorCode      string `json:"errorCode,omitempty"`
	Message        string `json:"message,omitempty"`
	DebugID        string `json:"debugId,omitempty"`
}
