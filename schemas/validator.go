package schemas

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/comjobs/comjobs/com"
)

// Validator checks events against the contract: each event type's data
// schema and, for requests, the template catalog and each template's
// parameter schema. Every schema is compiled once, in NewValidator; a
// Validator is safe for concurrent use.
type Validator struct {
	now    func() time.Time
	events map[string]*jsonschema.Schema // by event type
	params map[string]*jsonschema.Schema // by template ID
}

// Option configures a Validator.
type Option func(*validatorConfig)

type validatorConfig struct {
	now       func() time.Time
	templates []com.Template
}

// WithClock makes the Validator read the time (for expiresAt) from now
// instead of time.Now.
func WithClock(now func() time.Time) Option {
	return func(c *validatorConfig) { c.now = now }
}

// WithTemplates replaces the catalog whose parameter schemas are compiled
// (default com.Templates()). Templates are still found with com.Lookup, so
// this is for checking a catalog's schemas, not for adding templates.
func WithTemplates(ts []com.Template) Option {
	return func(c *validatorConfig) { c.templates = ts }
}

// NewValidator compiles the event schemas and every template's parameter
// schema. It fails if any of them does not compile.
func NewValidator(opts ...Option) (*Validator, error) {
	cfg := validatorConfig{now: time.Now}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.templates == nil {
		cfg.templates = com.Templates()
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	v := &Validator{
		now:    cfg.now,
		events: make(map[string]*jsonschema.Schema, len(eventSchemas)),
		params: make(map[string]*jsonschema.Schema, len(cfg.templates)),
	}
	for _, s := range eventSchemas {
		b, err := files.ReadFile(s.file)
		if err != nil {
			return nil, fmt.Errorf("schemas: read %s: %w", s.file, err)
		}
		sch, err := compile(c, s.id, b)
		if err != nil {
			return nil, err
		}
		v.events[s.typ] = sch
	}
	for _, t := range cfg.templates {
		params := t.Params
		if len(bytes.TrimSpace(params)) == 0 {
			params = json.RawMessage(`{"type":"object"}`)
		}
		sch, err := compile(c, SchemaBase+"templates/"+t.ID+".params.json", params)
		if err != nil {
			return nil, fmt.Errorf("template %s: %w", t.Name, err)
		}
		v.params[t.ID] = sch
	}
	return v, nil
}

func compile(c *jsonschema.Compiler, url string, b []byte) (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("schemas: parse %s: %w", url, err)
	}
	if err := c.AddResource(url, doc); err != nil {
		return nil, fmt.Errorf("schemas: add %s: %w", url, err)
	}
	sch, err := c.Compile(url)
	if err != nil {
		return nil, fmt.Errorf("schemas: compile %s: %w", url, err)
	}
	return sch, nil
}

// Resolved is a request that passed validation, with everything the
// consumer needs to submit it.
type Resolved struct {
	// Request is the request's data as sent (Data nil when it was absent).
	Request Request
	// Template is the catalog template the request names.
	Template *com.Template
	// Resource is the resource in canonical v1 form, whichever form was sent.
	Resource Resource
	// Params are the job's parameters ({} when absent); numbers are json.Number.
	Params map[string]any
	// Key is RequestKey(Source, ID), the request's identity everywhere.
	Key string
	// Source and ID are the event's source and id.
	Source, ID string
}

// ValidateRequest checks a comjobs.job.requested event received on subject
// and resolves its template and resource. subject is
// comjobs.requests.<template-slug>; when it is empty the subject check is
// skipped. Every refusal is a *Rejection whose Reason is, in the order the
// checks run:
//
//   - invalid-event: the type is not comjobs.job.requested; datacontenttype
//     is not JSON; dataschema names another schema; data is missing, not a
//     JSON object, or does not match requested.v1.json; neither or both of
//     resourceUri and resource; the subject's slug is not the template's;
//     an absolute, unknown or unsafe resource URI or id (path traversal);
//     an unknown resource type.
//   - unknown-template: data.template names no template of the catalog.
//   - resource-type-mismatch: the resource is not of the template's type.
//   - invalid-data: data.data fails the template's parameter schema
//     (message like "data.batch_size: must be <= 20").
//   - expired: data.expiresAt is not after the Validator's clock.
//
// The envelope itself (specversion, id, source) is the decoder's business
// (cenats.Decode); ValidateRequest only requires id and source non-empty.
func (v *Validator) ValidateRequest(subject string, e event.Event) (*Resolved, error) {
	if e.Context == nil {
		return nil, Reject(ReasonInvalidEvent, "", "not a CloudEvent")
	}
	if t := e.Type(); t != TypeRequested {
		return nil, Reject(ReasonInvalidEvent, "type", "type: must be %s, got %q", TypeRequested, t)
	}
	if strings.TrimSpace(e.ID()) == "" || strings.TrimSpace(e.Source()) == "" {
		return nil, Reject(ReasonInvalidEvent, "id", "id and source: required, they are the request's identity")
	}
	if ct := e.DataContentType(); ct != "" && !isJSON(ct) {
		return nil, Reject(ReasonInvalidEvent, "datacontenttype", "datacontenttype: must be application/json, got %q", ct)
	}
	if ds := e.DataSchema(); ds != "" && ds != DataSchemaRequested {
		return nil, Reject(ReasonInvalidEvent, "dataschema", "dataschema: must be %s, got %q", DataSchemaRequested, ds)
	}
	if e.DataBase64 {
		return nil, Reject(ReasonInvalidEvent, "data", "data: must be JSON, not base64")
	}
	obj, rej := parseObject(e.Data())
	if rej != nil {
		return nil, rej
	}
	_, hasURI := obj["resourceUri"]
	_, hasRes := obj["resource"]
	if hasURI == hasRes {
		return nil, Reject(ReasonInvalidEvent, "data.resource", "data.resource: exactly one of resourceUri and resource is required, got %s", map[bool]string{true: "both", false: "neither"}[hasURI])
	}
	if err := v.events[TypeRequested].Validate(obj); err != nil {
		return nil, explain(ReasonInvalidEvent, "data", err)
	}
	req, rej := requestFrom(obj)
	if rej != nil {
		return nil, rej
	}

	tpl, ok := com.Lookup(req.Template)
	if !ok {
		return nil, Reject(ReasonUnknownTemplate, "data.template", "data.template: no template %q in the catalog", req.Template)
	}
	if subject != "" {
		slug, ok := strings.CutPrefix(subject, SubjectRequests+".")
		if !ok || slug == "" || strings.Contains(slug, ".") {
			return nil, Reject(ReasonInvalidEvent, "subject", "subject: must be %s.<template-slug>, got %q", SubjectRequests, subject)
		}
		if slug != tpl.Slug {
			return nil, Reject(ReasonInvalidEvent, "subject", "subject: %s is for template %s, but data.template is %s (publish on %s)", subject, slug, tpl.Slug, RequestSubject(tpl.Slug))
		}
	}

	res, field, rej := resolveResource(req)
	if rej != nil {
		return nil, rej
	}
	if res.Type != tpl.ResourceType {
		return nil, Reject(ReasonResourceTypeMismatch, field, "%s: template %s runs on %s, got %s", field, tpl.Name, tpl.ResourceType, res.Type)
	}

	params := req.Data
	if params == nil {
		params = map[string]any{}
	}
	sch, ok := v.params[tpl.ID]
	if !ok {
		return nil, fmt.Errorf("schemas: template %s has no compiled parameter schema", tpl.Name)
	}
	if err := sch.Validate(params); err != nil {
		return nil, explain(ReasonInvalidData, "data", err)
	}

	if req.ExpiresAt != nil {
		if now := v.now(); !now.Before(*req.ExpiresAt) {
			return nil, Reject(ReasonExpired, "data.expiresAt", "data.expiresAt: expired at %s (now %s)", req.ExpiresAt.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
	}
	return &Resolved{
		Request:  req,
		Template: tpl,
		Resource: res,
		Params:   params,
		Key:      RequestKey(e.Source(), e.ID()),
		Source:   e.Source(),
		ID:       e.ID(),
	}, nil
}

// ValidateData checks data, the JSON data of an event of eventType, against
// that type's schema. A mismatch is a *Rejection with reason invalid-event
// naming the field and the rule; an unknown event type is a plain error.
// For requests it checks only the request shape, not the template's
// parameters: that is ValidateRequest's job.
func (v *Validator) ValidateData(eventType string, data []byte) error {
	sch, ok := v.events[eventType]
	if !ok {
		return fmt.Errorf("schemas: no schema for event type %q", eventType)
	}
	obj, rej := parseObject(data)
	if rej != nil {
		return rej
	}
	if err := sch.Validate(obj); err != nil {
		return explain(ReasonInvalidEvent, "data", err)
	}
	return nil
}

// parseObject decodes data as one JSON object, numbers as json.Number.
func parseObject(data []byte) (map[string]any, *Rejection) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, Reject(ReasonInvalidEvent, "data", "data: required, a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, Reject(ReasonInvalidEvent, "data", "data: not valid JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, Reject(ReasonInvalidEvent, "data", "data: unexpected content after the JSON object")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, Reject(ReasonInvalidEvent, "data", "data: must be a JSON object, got %s", jsonKind(v))
	}
	return obj, nil
}

// requestFrom reads a Request out of data that passed requested.v1.json.
func requestFrom(obj map[string]any) (Request, *Rejection) {
	var r Request
	r.Template, _ = obj["template"].(string)
	r.ResourceURI, _ = obj["resourceUri"].(string)
	if m, ok := obj["resource"].(map[string]any); ok {
		typ, _ := m["type"].(string)
		id, _ := m["id"].(string)
		r.Resource = &Resource{Type: typ, ID: id}
	}
	if m, ok := obj["data"].(map[string]any); ok {
		r.Data = m
	}
	if m, ok := obj["notify"].(map[string]any); ok {
		ch, _ := m["slackChannel"].(string)
		r.Notify = &Notify{SlackChannel: ch}
	}
	if m, ok := obj["labels"].(map[string]any); ok {
		r.Labels = make(map[string]string, len(m))
		for k, v := range m {
			r.Labels[k], _ = v.(string)
		}
	}
	if s, ok := obj["expiresAt"].(string); ok {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return r, Reject(ReasonInvalidEvent, "data.expiresAt", "data.expiresAt: must be an RFC 3339 time, got %q", s)
		}
		r.ExpiresAt = &t
	}
	return r, nil
}

// resolveResource returns the request's resource in canonical v1 form and
// the name of the field it came from.
func resolveResource(r Request) (Resource, string, *Rejection) {
	if r.Resource == nil {
		const field = "data.resourceUri"
		typ, id, err := com.ParseResourceURI(r.ResourceURI)
		if err != nil {
			return Resource{}, field, Reject(ReasonInvalidEvent, field, "%s: %v", field, err)
		}
		return Resource{Type: typ, ID: id}, field, nil
	}
	typ, ok := com.CanonicalResourceType(r.Resource.Type)
	if !ok {
		return Resource{}, "data.resource.type", Reject(ReasonInvalidEvent, "data.resource.type", "data.resource.type: unknown resource type %q", r.Resource.Type)
	}
	if err := com.ValidID(r.Resource.ID); err != nil {
		return Resource{}, "data.resource.id", Reject(ReasonInvalidEvent, "data.resource.id", "data.resource.id: %v", err)
	}
	return Resource{Type: typ, ID: r.Resource.ID}, "data.resource.type", nil
}

// isJSON reports whether a media type is JSON: application/json or a +json
// suffix, parameters ignored.
func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	}
	return fmt.Sprintf("%T", v)
}
