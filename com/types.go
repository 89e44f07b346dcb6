package com

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Job is one COM job, normalised across API versions. Fields COM did not send
// stay zero (v1beta2 sends no resultCode: ResultCode stays nil). Raw keeps
// the body exactly as COM sent it, unknown fields included.
type Job struct {
	ID          string
	ParentJobID string // "" for none
	Name        string // e.g. "GroupFirmwareCompliance"
	TemplateID  string // the template UUID
	// ResourceType is the v1 type, e.g. "compute-ops-mgmt/server"; ResourceID its id.
	ResourceType string
	ResourceID   string
	// URI is the job's own resourceUri, e.g. /compute-ops-mgmt/v1/jobs/<id>.
	URI           string
	State         string  // carried through even when unknown
	ResultCode    *string // nil when COM said null or nothing
	Status        string
	StatusDetails json.RawMessage
	Generation    int64
	CreatedAt     time.Time
	UpdatedAt     time.Time
	Raw           json.RawMessage
}

// CreateRequest is what is needed to create a job, whatever the API version.
type CreateRequest struct {
	TemplateID   string
	ResourceType string // v1 form, e.g. "compute-ops-mgmt/group"
	ResourceID   string
	Params       map[string]any // nil is sent as {}
}

// ListOptions are the query of a list call. Zero values are omitted.
type ListOptions struct {
	Filter string // OData subset, e.g. "state eq 'RUNNING'"
	Sort   string // e.g. "updatedAt desc"
	Select string
	Limit  int // 0..1000; 0 means the server default
	Offset int
}

// Page is one page of a list answer.
type Page struct {
	Count  int
	Offset int
	Total  int
	Items  []Job
	// ServerTime is COM's clock when it answered, from the answer's Date
	// header: whole seconds, so at most a second early; zero when COM sent
	// none (or one that did not parse).
	ServerTime time.Time
}

// Kind says, once and at the boundary, what a failure means to the caller.
type Kind int

const (
	// KindTransient: try again later (429, 5xx, timeouts, resets).
	KindTransient Kind = iota + 1
	// KindRejected: COM refused this request and always will (400, 404, 409,
	// 422 with COM's error body).
	KindRejected
	// KindConfig: comjobs is misconfigured (401 after renewal, 403, a 404
	// without COM's error body: wrong base URL or region). Not the request's fault.
	KindConfig
)

func (k Kind) String() string {
	switch k {
	case KindTransient:
		return "transient"
	case KindRejected:
		return "rejected"
	case KindConfig:
		return "configuration"
	}
	return "unknown"
}

// Error is every failure the client returns. It never holds a token or secret.
type Error struct {
	Kind       Kind
	Op         string // e.g. "create job", "get job 123"
	StatusCode int    // 0 when no HTTP answer came
	ErrorCode  string // COM's errorCode
	Message    string // COM's message, or a description of the body
	DebugID    string
	// RetryAfter is how long COM asked callers to wait (429), zero if unknown.
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("com: %s: %s", e.Op, e.Kind)
	if e.StatusCode != 0 {
		s += fmt.Sprintf(" (HTTP %d)", e.StatusCode)
	}
	if e.ErrorCode != "" {
		s += " " + e.ErrorCode
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.DebugID != "" {
		s += " [debugId " + e.DebugID + "]"
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the Kind of err, or 0 if err is not (and wraps no) *Error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

// IsTransient, IsRejected and IsConfig classify err.
func IsTransient(err error) bool { return KindOf(err) == KindTransient }
func IsRejected(err error) bool  { return KindOf(err) == KindRejected }
func IsConfig(err error) bool    { return KindOf(err) == KindConfig }

// IsNotFound reports a rejected 404 with COM's body: the job or resource does
// not exist (as opposed to a wrong base URL, which is KindConfig).
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == KindRejected && e.StatusCode == 404
}
