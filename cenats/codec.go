package cenats

import (
	"cmp"
	"encoding/json"
	"fmt"
	"mime"
	"slices"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/nats-io/nats.go"

	"github.com/comjobs/comjobs/schemas"
)

// DefaultMaxSize is the size limit Decode applies when DecodeOptions.MaxSize
// is zero: 64 KiB.
const DefaultMaxSize = 64 << 10

// Header names written by Encode. Decode reads them in any case.
const (
	HeaderPrefix      = "ce-"
	HeaderContentType = "content-type"
	// MediaTypeStructured is the content type of a structured-mode event.
	MediaTypeStructured = "application/cloudevents+json"
)

const (
	hSpecVersion     = "ce-specversion"
	hID              = "ce-id"
	hSource          = "ce-source"
	hType            = "ce-type"
	hSubject         = "ce-subject"
	hTime            = "ce-time"
	hDataSchema      = "ce-dataschema"
	hDataContentType = "ce-datacontenttype"
)

// Encode returns e as a binary-mode NATS message on subject: each context
// attribute and extension in a ce-<name> header with its value
// percent-encoded, time as RFC 3339 with nanoseconds in UTC, datacontenttype
// also in content-type, and the data bytes as the body. It fails, without a
// message, for an event that is not CloudEvents 1.0, does not pass
// e.Validate, or holds a control character in a string attribute. The returned message has no Nats-Msg-Id; it shares the data
// bytes with e.
func Encode(subject string, e event.Event) (*nats.Msg, error) {
	if e.Context == nil || e.SpecVersion() != event.CloudEventsVersionV1 {
		return nil, fmt.Errorf("encode event for %s: specversion must be %s", subject, event.CloudEventsVersionV1)
	}
	if err := check(&e, HeaderPrefix); err != nil {
		return nil, fmt.Errorf("encode event for %s: %v", subject, err)
	}
	exts := e.Extensions()
	// Nine fixed headers at most: specversion, id, source, type, subject,
	// time, dataschema, datacontenttype and content-type.
	h := make(nats.Header, 9+len(exts))
	// Every value is a one-element slice of one backing array: one
	// allocation instead of one per header. The capacity of each is one, so
	// an append to one header cannot overwrite the next.
	vals := make([]string, 0, 9+len(exts))
	set := func(k, v string) {
		vals = append(vals, v)
		h[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	set(hSpecVersion, event.CloudEventsVersionV1)
	set(hID, percentEncode(e.ID()))
	set(hSource, percentEncode(e.Source()))
	set(hType, percentEncode(e.Type()))
	if s := e.Subject(); s != "" {
		set(hSubject, percentEncode(s))
	}
	if t := e.Time(); !t.IsZero() {
		set(hTime, types.FormatTime(t))
	}
	if s := e.DataSchema(); s != "" {
		set(hDataSchema, percentEncode(s))
	}
	if ct := e.DataContentType(); ct != "" {
		v := percentEncode(ct)
		set(hDataContentType, v)
		set(HeaderContentType, v)
	}
	for name, v := range exts {
		s, err := types.Format(v)
		if err != nil {
			return nil, fmt.Errorf("encode event %q extension %s: %w", e.ID(), name, err)
		}
		set(HeaderPrefix+name, percentEncode(s))
	}
	return &nats.Msg{Subject: subject, Header: h, Data: e.Data()}, nil
}

// DecodeOptions tunes Decode. The zero value is ready to use.
type DecodeOptions struct {
	// MaxSize is the largest event accepted, in bytes, counting the body and
	// every header name and value. Zero means DefaultMaxSize.
	MaxSize int
}

// attr is one ce- header, name lower-cased without the prefix, value decoded.
type attr struct{ name, value string }

// Decode reads an event from the headers and body of a NATS message, in
// binary or structured mode, with header names in any case. Every refusal
// is a *schemas.Rejection with reason invalid-event whose message names the
// attribute and the rule (e.g. "ce-specversion: must be 1.0, got 0.3").
// The event shares body's bytes.
func Decode(h nats.Header, body []byte, opts DecodeOptions) (event.Event, error) {
	max := opts.MaxSize
	if max <= 0 {
		max = DefaultMaxSize
	}
	size := len(body)
	for k, vs := range h {
		for _, v := range vs {
			size += len(k) + len(v)
		}
	}
	if size > max {
		return event.Event{}, reject("", "event of %d bytes exceeds the limit of %d bytes", size, max)
	}

	var (
		contentType, ceContentType string
		haveCT, haveCECT           bool
		attrs                      = make([]attr, 0, len(h))
	)
	for k, vs := range h {
		switch {
		case strings.EqualFold(k, HeaderContentType):
			if len(vs) != 1 || haveCT {
				return event.Event{}, reject(HeaderContentType, "must appear once")
			}
			contentType, haveCT = vs[0], true
		case len(k) > len(HeaderPrefix) && strings.EqualFold(k[:len(HeaderPrefix)], HeaderPrefix):
			name := strings.ToLower(k[len(HeaderPrefix):])
			if len(vs) != 1 {
				return event.Event{}, reject(HeaderPrefix+name, "must appear once")
			}
			for _, a := range attrs {
				if a.name == name {
					return event.Event{}, reject(HeaderPrefix+name, "must appear once")
				}
			}
			v, err := percentDecode(vs[0])
			if err != nil {
				return event.Event{}, reject(HeaderPrefix+name, "%v", err)
			}
			if name == "datacontenttype" {
				ceContentType, haveCECT = v, true
			}
			attrs = append(attrs, attr{name, v})
		}
	}

	if haveCT && isStructured(contentType) {
		return decodeStructured(body)
	}
	if haveCT && haveCECT && !sameMediaType(contentType, ceContentType) {
		return event.Event{}, reject(hDataContentType, "%q disagrees with content-type %q", ceContentType, contentType)
	}
	if haveCT && !haveCECT {
		attrs = append(attrs, attr{"datacontenttype", contentType})
	}
	return decodeBinary(attrs, body)
}

// decodeBinary builds the event from decoded ce- attributes and the body.
func decodeBinary(attrs []attr, body []byte) (event.Event, error) {
	// Attributes are checked in a fixed order so that the first complaint
	// is the same for the same message.
	slices.SortFunc(attrs, func(a, b attr) int { return compareAttrs(a.name, b.name) })

	spec := ""
	for _, a := range attrs {
		if a.name == "specversion" {
			spec = a.value
		}
	}
	switch spec {
	case event.CloudEventsVersionV1:
	case "":
		return event.Event{}, reject(hSpecVersion, "required")
	default:
		return event.Event{}, reject(hSpecVersion, "must be %s, got %s", event.CloudEventsVersionV1, spec)
	}

	e := event.New(event.CloudEventsVersionV1)
	for _, a := range attrs {
		switch a.name {
		case "specversion":
		case "id":
			e.SetID(a.value)
		case "source":
			e.SetSource(a.value)
		case "type":
			e.SetType(a.value)
		case "subject":
			e.SetSubject(a.value)
		case "time":
			t, err := time.Parse(time.RFC3339Nano, a.value)
			if err != nil {
				return event.Event{}, reject(HeaderPrefix+a.name, "must be an RFC 3339 timestamp, got %q", a.value)
			}
			e.SetTime(t)
		case "dataschema":
			e.SetDataSchema(a.value)
		case "datacontenttype":
			e.SetDataContentType(a.value)
		case "data", "data_base64":
			return event.Event{}, reject(HeaderPrefix+a.name, "is not an attribute in binary mode")
		default:
			if !validAttrName(a.name) {
				return event.Event{}, reject(HeaderPrefix+a.name, "attribute names are lower-case ASCII letters and digits")
			}
			e.SetExtension(a.name, a.value)
		}
	}
	if len(body) > 0 {
		e.DataEncoded = body
	}
	if err := check(&e, HeaderPrefix); err != nil {
		return event.Event{}, err
	}
	return e, nil
}

// decodeStructured reads an application/cloudevents+json body.
func decodeStructured(body []byte) (event.Event, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(body, &probe); err != nil {
		return event.Event{}, reject("", "structured event: not a JSON object: %v", err)
	}
	raw, ok := probe["specversion"]
	if !ok {
		return event.Event{}, reject("specversion", "required")
	}
	var spec string
	if err := json.Unmarshal(raw, &spec); err != nil {
		return event.Event{}, reject("specversion", "must be a string, got %s", raw)
	}
	if spec != event.CloudEventsVersionV1 {
		return event.Event{}, reject("specversion", "must be %s, got %s", event.CloudEventsVersionV1, spec)
	}
	for _, name := range []string{"id", "source", "type"} {
		if _, ok := probe[name]; !ok {
			return event.Event{}, reject(name, "required")
		}
	}
	if raw, ok := probe["time"]; ok {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return event.Event{}, reject("time", "must be an RFC 3339 timestamp, got %s", raw)
		}
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			return event.Event{}, reject("time", "must be an RFC 3339 timestamp, got %q", s)
		}
	}
	var e event.Event
	if err := e.UnmarshalJSON(body); err != nil {
		return event.Event{}, reject("", "structured event: %v", err)
	}
	if err := check(&e, ""); err != nil {
		return event.Event{}, err
	}
	return e, nil
}

// check runs sdk-go's validation plus the non-emptiness rules and turns the
// first complaint (in attribute order) into a rejection.
func check(e *event.Event, prefix string) error {
	// Arrays, not slices, and field names joined only for a complaint: the
	// check runs on every event in and out, so it allocates nothing itself.
	id, source, typ := e.ID(), e.Source(), e.Type()
	for _, c := range [...]struct{ name, value string }{{"id", id}, {"source", source}, {"type", typ}} {
		if strings.TrimSpace(c.value) == "" {
			return reject(prefix+c.name, "required, must not be empty")
		}
	}
	for _, c := range [...]struct{ name, value string }{
		{"id", id}, {"source", source}, {"type", typ}, {"subject", e.Subject()},
		{"datacontenttype", e.DataContentType()}, {"dataschema", e.DataSchema()},
	} {
		if err := checkString(prefix, c.name, c.value); err != nil {
			return err
		}
	}
	for name, v := range e.Extensions() {
		if s, ok := v.(string); ok {
			if err := checkString(prefix, name, s); err != nil {
				return err
			}
		}
	}
	err := e.Validate()
	if err == nil {
		return nil
	}
	verr, ok := err.(event.ValidationError)
	if !ok || len(verr) == 0 {
		return reject("", "%v", err)
	}
	names := make([]string, 0, len(verr))
	for name := range verr {
		names = append(names, name)
	}
	slices.SortFunc(names, compareAttrs)
	name := names[0]
	return reject(prefix+strings.TrimPrefix(name, "extension:"), "%v", verr[name])
}

// compareAttrs orders attribute names by rank, then by name.
func compareAttrs(a, b string) int {
	if c := cmp.Compare(attrRank(a), attrRank(b)); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

// attrRank orders attributes: the required ones first, then the optional
// ones of the spec, then extensions.
func attrRank(name string) int {
	switch name {
	case "specversion":
		return 0
	case "id":
		return 1
	case "source":
		return 2
	case "type":
		return 3
	case "datacontenttype":
		return 4
	case "dataschema":
		return 5
	case "subject":
		return 6
	case "time":
		return 7
	}
	return 8
}

func validAttrName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func isStructured(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == MediaTypeStructured
}

// sameMediaType reports whether a and b name the same media type, ignoring
// parameters and case.
func sameMediaType(a, b string) bool {
	if a == b {
		return true
	}
	ma, _, errA := mime.ParseMediaType(a)
	mb, _, errB := mime.ParseMediaType(b)
	return errA == nil && errB == nil && ma == mb
}

func reject(field, format string, args ...any) *schemas.Rejection {
	msg := fmt.Sprintf(format, args...)
	if field != "" {
		msg = field + ": " + msg
	}
	return &schemas.Rejection{Reason: schemas.ReasonInvalidEvent, Field: field, Message: msg}
}

// checkString refuses what the CloudEvents type system forbids in a
// String: the control characters U+0000-U+001F and U+007F-U+009F.
// The complaint names the field prefix+name.
func checkString(prefix, name, v string) error {
	for i, r := range v {
		if r <= 0x1f || (r >= 0x7f && r <= 0x9f) {
			return reject(prefix+name, "control character U+%04X at byte %d is not allowed in a CloudEvents string", r, i)
		}
	}
	return nil
}
