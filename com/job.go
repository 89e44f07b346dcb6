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
// {resourceUri, type}) and v1beta2 (as v1beta3, without resultCode).
type wireJob struct {
	ID                    *string         `json:"id"`
	ParentJobID           *string         `json:"parentJobId"`
	Name                  *string         `json:"name"`
	DisplayName           *string         `json:"displayName"`
	JobTemplate           *string         `json:"jobTemplate"`
	JobTemplateURI        *string         `json:"jobTemplateUri"`
	AssociatedResourceURI *string         `json:"associatedResourceUri"`
	Resource              *wireResource   `json:"resource"`
	ResourceURI           *string         `json:"resourceUri"`
	State                 *string         `json:"state"`
	ResultCode            *string         `json:"resultCode"`
	Status                *string         `json:"status"`
	StatusDetails         json.RawMessage `json:"statusDetails"`
	Generation            *int64          `json:"generation"`
	CreatedAt             *string         `json:"createdAt"`
	UpdatedAt             *string         `json:"updatedAt"`
}

type wireResource struct {
	Type        *string `json:"type"`
	ID          *string `json:"id"`
	ResourceURI *string `json:"resourceUri"`
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
// ParseResourceURI refuses leaves ResourceType and ResourceID empty. DecodeJob
// never panics, whatever the input.
func DecodeJob(body []byte) (*Job, error) {
	var w wireJob
	// Unmarshal, not a Decoder: it refuses trailing data too, without a
	// second buffer for a body already in memory.
	if err := json.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("decode job: %w", err)
	}
	if w.ID == nil || *w.ID == "" {
		return nil, errors.New("decode job: no id")
	}
	j := &Job{
		ID:          *w.ID,
		ParentJobID: str(w.ParentJobID),
		Name:        str(w.Name),
		URI:         str(w.ResourceURI),
		State:       str(w.State),
		Status:      str(w.Status),
		Raw:         append(json.RawMessage(nil), bytes.TrimSpace(body)...),
	}
	if j.Name == "" {
		j.Name = str(w.DisplayName)
	}
	if w.ResultCode != nil {
		rc := *w.ResultCode
		j.ResultCode = &rc
	}
	if len(w.StatusDetails) > 0 && !bytes.Equal(w.StatusDetails, []byte("null")) {
		j.StatusDetails = append(json.RawMessage(nil), w.StatusDetails...)
	}
	if w.Generation != nil {
		j.Generation = *w.Generation
	}
	j.CreatedAt = parseTime(str(w.CreatedAt))
	j.UpdatedAt = parseTime(str(w.UpdatedAt))

	j.TemplateID = str(w.JobTemplate)
	if j.TemplateID == "" {
		if u := str(w.JobTemplateURI); u != "" {
			j.TemplateID = u[strings.LastIndexByte(u, '/')+1:]
		}
	}

	var resourceURI string
	if r := w.Resource; r != nil {
		if id := str(r.ID); id != "" {
			j.ResourceID = id
			j.ResourceType = str(r.Type)
			if c, ok := CanonicalResourceType(j.ResourceType); ok {
				j.ResourceType = c
			}
		}
		resourceURI = str(r.ResourceURI)
	}
	if resourceURI == "" {
		resourceURI = str(w.AssociatedResourceURI)
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

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}
