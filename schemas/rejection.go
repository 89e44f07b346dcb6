package schemas

import "fmt"

// Rejection reasons, as fixed by the design contract.
const (
	ReasonInvalidEvent         = "invalid-event"
	ReasonUnknownTemplate      = "unknown-template"
	ReasonInvalidData          = "invalid-data"
	ReasonResourceTypeMismatch = "resource-type-mismatch"
	ReasonForbidden            = "forbidden"
	ReasonExpired              = "expired"
	ReasonCOMRejected          = "com-rejected"
	ReasonRetriesExhausted     = "retries-exhausted"
)

// Rejection is a permanent refusal of a request: it can never succeed as sent.
// Message is for humans and names the field and the rule.
type Rejection struct {
	Reason  string
	Field   string
	Message string
}

// Error implements error.
func (r *Rejection) Error() string {
	if r.Field != "" && !hasPrefix(r.Message, r.Field) {
		return fmt.Sprintf("%s: %s: %s", r.Reason, r.Field, r.Message)
	}
	return r.Reason + ": " + r.Message
}

// Reject builds a Rejection; format and args make the message.
func Reject(reason, field, format string, args ...any) *Rejection {
	return &Rejection{Reason: reason, Field: field, Message: fmt.Sprintf(format, args...)}
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }
