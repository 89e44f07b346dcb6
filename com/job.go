package com

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// wireJob is a job as any API version sends it: v1 (jobTemplate, resource
// {type, id}), v1beta3 (jobTemplateUri, associatedResourceUri, resource
// {resourceUri, type}) and v1beta2 (as v1beta3, without resultCode). Only
// resultCode is a pointer, the one field whose absence means something;
// for the others json.Unmarshal leaves the zero value for absent and null
// alike and refuses a value of the wrong type, without an allocation per
// field.
type wireJob struct {
	ID                    string          `json:"id"`
	ParentJobID           string          `json:"parentJobId"`
	Name                  string          `json:"name"`
	DisplayName           string          `json:"displayName"`
	JobTemplate           string          `json:"jobTemplate"`
	JobTemplateURI        string          `json:"jobTemplateUri"`
	AssociatedResourceURI string          `json:"associatedResourceUri"`
	Resource              wireResource    `json:"resource"`
	ResourceURI           string          `json:"resourceUri"`
	State                 string          `json:"state"`
	ResultCode            *string         `json:"resultCode"`
	Status                string          `json:"status"`
	StatusDetails         json.RawMessage `json:"statusDetails"`
	Generation            int64           `json:"generation"`
	CreatedAt             string          `json:"createdAt"`
	UpdatedAt             string          `json:"updatedAt"`
}

type wireResource struct {
	Type        string `json:"type"`
	ID          string `json:"id"`
	ResourceURI string `json:"resourceUri"`
}

// DecodeJob decodes one job body of any supported API version into the
// normalised Job. It needs a JSON object with a non-empty string "id"; every
// other field is optional and stays zero when absent or null, so nothing COM
// did not say is derived (a v1beta2 job keeps ResultCode nil). Unknown states
// are carried through as sent, and Raw holds a copy of body. A field of the
// wrong JSON type is an error; a timestamp that does not parse as RFC 3339
// leaves the time zero (the rest of the job is still worth having). For
// v1beta* jobs the resource comes from resource.resourceUri, else
// associatedResourceUri, and the template id from jobTemplateUri; a URI that
// ParseResourceURI refuses leaves ResourceType and ResourceID empty. A key
// given twice keeps its last non-null value (objects are merged), as
// encoding/json does for value fields. DecodeJob never panics, whatever the
// input.
func DecodeJob(body []byte) (*Job, error) {
	var w wireJob
	// Unmarshal, not a Decoder: it refuses trailing data too, without a
	// second buffer for a body already in memory.
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("decode job: %w", err)
	}
	if w.ID == "" {
		return nil, errors.New("decode job: no id")
	}
	j := &Job{
		ID:          w.ID,
		ParentJobID: w.ParentJobID,
		Name:        w.Name,
		URI:         w.ResourceURI,
		State:       w.State,
		Status:      w.Status,
		ResultCode:  w.ResultCode,
		Generation:  w.Generation,
		CreatedAt:   parseTime(w.CreatedAt),
		UpdatedAt:   parseTime(w.UpdatedAt),
		TemplateID:  w.JobTemplate,
		Raw:         append(json.RawMessage(nil), bytes.TrimSpace(body)...),
	}
	if j.Name == "" {
		j.Name = w.DisplayName
	}
	if len(w.StatusDetails) > 0 && !bytes.Equal(w.StatusDetails, []byte("null")) {
		j.StatusDetails = append(json.RawMessage(nil), w.StatusDetails...)
	}
	if j.TemplateID == "" && w.JobTemplateURI != "" {
		u := w.JobTemplateURI
		j.TemplateID = u[strings.LastIndexByte(u, '/')+1:]
	}
	if r := w.Resource; r.ID != "" {
		j.ResourceID = r.ID
		j.ResourceType = r.Type
		if c, ok := CanonicalResourceType(j.ResourceType); ok {
			j.ResourceType = c
		}
	}
	resourceURI := w.Resource.ResourceURI
	if resourceURI == "" {
		resourceURI = w.AssociatedResourceURI
	}
	if j.ResourceID == "" && resourceURI != "" {
		if typ, id, err := ParseResourceURI(resourceURI); err == nil {
			j.ResourceType, j.ResourceID = typ, id
		}
	}
	return j, nil
}

// decodePage decodes a list answer {count, offset, total, items}.
func decodePage(body []byte) (*Page, error) {
	var w struct {
		Count  int               `json:"count"`
		Offset int               `json:"offset"`
		Total  int               `json:"total"`
		Items  []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("decode job page: %w", err)
	}
	p := &Page{Count: w.Count, Offset: w.Offset, Total: w.Total, Items: make([]Job, 0, len(w.Items))}
	for i, raw := range w.Items {
		j, err := DecodeJob(raw)
		if err != nil {
			return nil, fmt.Errorf("decode job page: item %d: %w", i, err)
		}
		p.Items = append(p.Items, *j)
	}
	return p, nil
}

func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}
