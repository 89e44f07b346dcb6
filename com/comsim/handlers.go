package comsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/comjobs/comjobs/com"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// APIError is a refusal of a create request, as the simulator answers it
// over HTTP: the status and COM's message and details.
type APIError struct {
	Status  int
	Message string
	Details []any
}

func (e *APIError) Error() string { return fmt.Sprintf("comsim: %d: %s", e.Status, e.Message) }

func badRequest(field, format string, args ...any) *APIError {
	msg := fmt.Sprintf(format, args...)
	return &APIError{Status: http.StatusBadRequest, Message: msg, Details: []any{map[string]any{
		"type": "validation", "source": field, "message": msg,
	}}}
}

// Submit creates a job as POST /compute-ops-mgmt/v1/jobs would, without
// HTTP (no faults, no rate limit, not counted). A refusal is an *APIError.
func (s *Server) Submit(req com.CreateRequest) (JobRecord, error) {
	params := req.Params
	if params == nil {
		params = map[string]any{}
	}
	// Round-trip so params look as if they came over the wire.
	b, err := json.Marshal(params)
	if err != nil {
		return JobRecord{}, fmt.Errorf("comsim: submit: encode params: %w", err)
	}
	var wire map[string]any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&wire); err != nil {
		return JobRecord{}, fmt.Errorf("comsim: submit: decode params: %w", err)
	}
	spec, apiErr := s.validate(req.TemplateID, req.ResourceType, req.ResourceID, wire, "jobParams")
	if apiErr != nil {
		return JobRecord{}, apiErr
	}
	return s.store.create(spec, s.now()), nil
}

// validate checks a create request as COM would and resolves it.
func (s *Server) validate(templateID, resType, resID string, params map[string]any, paramsField string) (createSpec, *APIError) {
	if templateID == "" {
		return createSpec{}, badRequest("jobTemplate", "jobTemplate is required")
	}
	t, ok := com.Lookup(templateID)
	if !ok || !strings.EqualFold(t.ID, templateID) {
		return createSpec{}, badRequest("jobTemplate", "job template %q not found", templateID)
	}
	if resType == "" || resID == "" {
		return createSpec{}, badRequest("resourceType", "resource type and id are required")
	}
	rt := canonicalType(resType)
	if _, ok := knownTypes[rt]; !ok {
		return createSpec{}, badRequest("resourceType", "unknown resource type %q", resType)
	}
	if rt != canonicalType(t.ResourceType) {
		return createSpec{}, badRequest("resourceType", "job template %s (%s) runs on %s, not %s", t.ID, t.Name, t.ResourceType, rt)
	}
	res, ok := s.inv.Get(rt, resID)
	if !ok {
		return createSpec{}, &APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("resource %s %q not found", rt, resID), Details: []any{}}
	}
	if params == nil {
		params = map[string]any{}
	}
	if err := s.checkParams(t, params, paramsField); err != nil {
		return createSpec{}, err
	}
	spec := createSpec{templ: t, resType: rt, resID: resID, params: params}
	if rt == com.ResourceGroup {
		devs, err := groupDevices(res, params, paramsField)
		if err != nil {
			return createSpec{}, err
		}
		spec.devices = devs
	}
	return spec, nil
}

// groupDevices returns the servers a group job runs on: the "devices"
// parameter, which must name members of the group, or all its members.
func groupDevices(g Resource, params map[string]any, field string) ([]string, *APIError) {
	raw, ok := params["devices"]
	if !ok {
		return g.Members, nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, badRequest(field+".devices", "%s.devices must be an array of server ids", field)
	}
	members := make(map[string]bool, len(g.Members))
	for _, m := range g.Members {
		members[m] = true
	}
	var out []string
	for _, d := range list {
		id, ok := d.(string)
		if !ok || !members[id] {
			return nil, badRequest(field+".devices", "%s.devices: %v is not a server of group %s", field, d, g.ID)
		}
		out = append(out, id)
	}
	return out, nil
}

// checkParams validates params against the template's JSON Schema.
func (s *Server) checkParams(t *com.Template, params map[string]any, field string) *APIError {
	if len(t.Params) == 0 {
		return nil
	}
	sch, err := s.schema(t)
	if err != nil {
		s.logger.Error("compile template schema", "template", t.ID, "err", err)
		return nil
	}
	err = sch.Validate(map[string]any(params))
	var ve *jsonschema.ValidationError
	if err == nil || !errors.As(err, &ve) {
		return nil
	}
	leaf := ve
	for len(leaf.Causes) > 0 {
		leaf = leaf.Causes[0]
	}
	loc := field
	if len(leaf.InstanceLocation) > 0 {
		loc += "." + strings.Join(leaf.InstanceLocation, ".")
	}
	msg := fmt.Sprintf("invalid %s for job template %s (%s): at %s: %s", field, t.ID, t.Name, loc, leafMessage(leaf))
	return &APIError{Status: http.StatusBadRequest, Message: msg, Details: []any{map[string]any{
		"type": "validation", "source": loc, "message": leafMessage(leaf),
	}}}
}

// leafMessage is the text of one schema failure ("missing property
// 'bundle_id'", "value must be one of 'BIOS', 'ILO_SETTINGS'").
func leafMessage(ve *jsonschema.ValidationError) string {
	msg := ve.Error()
	// The library prefixes the location; keep only what is wrong.
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return strings.TrimSpace(msg)
}

func (s *Server) schema(t *com.Template) (*jsonschema.Schema, error) {
	if v, ok := s.schemas.Load(t.ID); ok {
		return v.(*jsonschema.Schema), nil
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(t.Params))
	if err != nil {
		return nil, fmt.Errorf("template %s schema: %w", t.ID, err)
	}
	c := jsonschema.NewCompiler()
	loc := "comsim://templates/" + t.ID + ".json"
	if err := c.AddResource(loc, doc); err != nil {
		return nil, fmt.Errorf("template %s schema: %w", t.ID, err)
	}
	sch, err := c.Compile(loc)
	if err != nil {
		return nil, fmt.Errorf("template %s schema: %w", t.ID, err)
	}
	s.schemas.Store(t.ID, sch)
	return sch, nil
}

func decodeBody(r *http.Request, v any) error {
	d := json.NewDecoder(r.Body)
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return err
	}
	return nil
}

var (
	templateURIRe = regexp.MustCompile(`^/compute-ops-mgmt/[^/]+/job-templates/([^/?#]+)$`)
	resourceURIRe = regexp.MustCompile(`^/compute-ops-mgmt/[^/]+/([^/?#]+)/([^/?#]+)$`)
)

// handleCreate serves POST .../jobs: v1 takes jobTemplate, resourceType,
// resourceId, jobParams; v1beta3 takes jobTemplateUri, resourceUri, data.
func (s *Server) handleCreate(version string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var (
			spec   createSpec
			apiErr *APIError
		)
		if version == "v1" {
			var body struct {
				JobTemplate  string         `json:"jobTemplate"`
				ResourceType string         `json:"resourceType"`
				ResourceID   string         `json:"resourceId"`
				JobParams    map[string]any `json:"jobParams"`
			}
			if err := decodeBody(r, &body); err != nil {
				writeCOMError(w, http.StatusBadRequest, "request body is not a valid job: "+err.Error(), nil)
				return
			}
			spec, apiErr = s.validate(body.JobTemplate, body.ResourceType, body.ResourceID, body.JobParams, "jobParams")
		} else {
			var body struct {
				JobTemplateURI string         `json:"jobTemplateUri"`
				ResourceURI    string         `json:"resourceUri"`
				Data           map[string]any `json:"data"`
			}
			if err := decodeBody(r, &body); err != nil {
				writeCOMError(w, http.StatusBadRequest, "request body is not a valid job: "+err.Error(), nil)
				return
			}
			m := templateURIRe.FindStringSubmatch(body.JobTemplateURI)
			if m == nil {
				writeCOMError(w, http.StatusBadRequest, fmt.Sprintf("jobTemplateUri %q is not a job-template URI", body.JobTemplateURI), nil)
				return
			}
			rm := resourceURIRe.FindStringSubmatch(body.ResourceURI)
			var rt string
			ok := rm != nil
			if ok {
				rt, ok = typeFromCollection(rm[1])
			}
			if !ok {
				writeCOMError(w, http.StatusBadRequest, fmt.Sprintf("resourceUri %q is not a resource URI", body.ResourceURI), nil)
				return
			}
			id, err := url.PathUnescape(rm[2])
			if err != nil {
				writeCOMError(w, http.StatusBadRequest, fmt.Sprintf("resourceUri %q is not a resource URI", body.ResourceURI), nil)
				return
			}
			spec, apiErr = s.validate(m[1], rt, id, body.Data, "data")
		}
		if apiErr != nil {
			writeCOMError(w, apiErr.Status, apiErr.Message, apiErr.Details)
			return
		}
		rec := s.store.create(spec, s.now())
		w.Header().Set("Location", jobURI(version, rec.ID))
		writeJSON(w, http.StatusCreated, renderJob(version, rec))
	}
}

func (s *Server) handleGet(version string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		rec, ok := s.store.get(id, s.now())
		if !ok {
			writeCOMError(w, http.StatusNotFound, fmt.Sprintf("job %q not found", id), nil)
			return
		}
		writeJSON(w, http.StatusOK, renderJob(version, rec))
	}
}

// DefaultListLimit is the page size of a list that names no limit.
const DefaultListLimit = 100

func (s *Server) handleList(version string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q, err := s.parseList(r.URL.Query())
		if err != nil {
			writeCOMError(w, http.StatusBadRequest, err.Error(), nil)
			return
		}
		now := s.now()
		total, recs := s.store.list(q, now)
		items := make([]any, len(recs))
		for i, rec := range recs {
			items[i] = renderJob(version, rec)
		}
		// The Date header tells the simulator's clock (the one job times
		// come from), as COM's tells its own.
		w.Header().Set("Date", now.UTC().Format(http.TimeFormat))
		writeJSON(w, http.StatusOK, map[string]any{
			"count": len(items), "offset": q.offset, "total": total, "items": items,
		})
	}
}

// parseList reads offset, limit (0..1000), sort ("field [asc|desc], ...")
// and filter; select is accepted and ignored (bodies are always whole).
func (s *Server) parseList(v url.Values) (listQuery, error) {
	q := listQuery{limit: DefaultListLimit, lag: s.listLag}
	if o := v.Get("offset"); o != "" {
		n, err := strconv.Atoi(o)
		if err != nil || n < 0 {
			return q, fmt.Errorf("offset must be a non-negative integer, got %q", o)
		}
		q.offset = n
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 || n > 1000 {
			return q, fmt.Errorf("limit must be an integer from 0 to 1000, got %q", l)
		}
		q.limit = n
	}
	if so := strings.TrimSpace(v.Get("sort")); so != "" {
		for _, part := range strings.Split(so, ",") {
			f := strings.Fields(part)
			if len(f) == 0 || len(f) > 2 {
				return q, fmt.Errorf("invalid sort %q", so)
			}
			if _, ok := filterFields[f[0]]; !ok {
				return q, fmt.Errorf("invalid sort: unknown field %q", f[0])
			}
			k := sortKey{field: f[0]}
			if len(f) == 2 {
				switch strings.ToLower(f[1]) {
				case "asc":
				case "desc":
					k.desc = true
				default:
					return q, fmt.Errorf("invalid sort direction %q", f[1])
				}
			}
			q.sort = append(q.sort, k)
		}
	}
	cf, err := parseFilter(v.Get("filter"))
	if err != nil {
		return q, err
	}
	q.filter = cf
	return q, nil
}

// handlePatch serves PATCH /v1/jobs/{id}: {"state":"ERROR"|"COMPLETE"}
// ends a job (resultCode FAILURE for ERROR and SUCCESS for COMPLETE unless
// the body names one); {"input":{"stopOnRequest":true}} is accepted and
// shown in the status. An ended job answers 409.
func (s *Server) handlePatch(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var body struct {
		State      string          `json:"state"`
		ResultCode string          `json:"resultCode"`
		Input      json.RawMessage `json:"input"`
	}
	if err := decodeBody(r, &body); err != nil {
		writeCOMError(w, http.StatusBadRequest, "request body is not a valid patch: "+err.Error(), nil)
		return
	}
	now := s.now()
	switch {
	case body.State == StateError || body.State == StateComplete:
		rc := body.ResultCode
		if rc == "" {
			rc = ResultSuccess
			if body.State == StateError {
				rc = ResultFailure
			}
		}
		if rc != ResultSuccess && rc != ResultFailure {
			writeCOMError(w, http.StatusBadRequest, fmt.Sprintf("resultCode must be SUCCESS or FAILURE, got %q", rc), nil)
			return
		}
		rec, ok, err := s.store.end(id, body.State, rc, now)
		s.patchAnswer(w, id, rec, ok, err)
	case body.State == "" && len(body.Input) > 0:
		rec, ok, err := s.store.stopRequested(id, now)
		s.patchAnswer(w, id, rec, ok, err)
	default:
		writeCOMError(w, http.StatusBadRequest, fmt.Sprintf("state may only be set to ERROR or COMPLETE, got %q", body.State), nil)
	}
}

func (s *Server) patchAnswer(w http.ResponseWriter, id string, rec JobRecord, ok bool, err error) {
	switch {
	case !ok:
		writeCOMError(w, http.StatusNotFound, fmt.Sprintf("job %q not found", id), nil)
	case err != nil:
		writeCOMError(w, http.StatusConflict, fmt.Sprintf("job %s is %s: %v", id, rec.State, err), nil)
	default:
		writeJSON(w, http.StatusOK, renderJob("v1", rec))
	}
}

// stopRequested records a stop request on a running job.
func (st *store) stopRequested(id string, now time.Time) (JobRecord, bool, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.advance(now)
	j, ok := st.byID[id]
	if !ok {
		return JobRecord{}, false, nil
	}
	if terminal(j.state) {
		return snapshot(j, false), true, errTerminal
	}
	st.change(j, j.state, j.resultCode, "Stop requested", now)
	return snapshot(j, false), true, nil
}

// timeFormat is how COM writes times: 2022-08-04T18:52:26.278608+00:00.
const timeFormat = "2006-01-02T15:04:05.000000-07:00"

func jobURI(version, id string) string {
	return "/compute-ops-mgmt/" + version + "/jobs/" + url.PathEscape(id)
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// v1Job is a job as /compute-ops-mgmt/v1/jobs answers it.
type v1Job struct {
	ID               string         `json:"id"`
	ParentJobID      *string        `json:"parentJobId"`
	Type             string         `json:"type"`
	ResourceURI      string         `json:"resourceUri"`
	CreatedAt        string         `json:"createdAt"`
	UpdatedAt        string         `json:"updatedAt"`
	DeleteOnComplete bool           `json:"deleteOnComplete"`
	Cancelable       bool           `json:"cancelable"`
	Name             string         `json:"name"`
	JobTemplate      string         `json:"jobTemplate"`
	Resource         v1Resource     `json:"resource"`
	JobParams        map[string]any `json:"jobParams"`
	State            string         `json:"state"`
	ResultCode       *string        `json:"resultCode"`
	Status           string         `json:"status"`
	StatusDetails    map[string]any `json:"statusDetails"`
	Results          map[string]any `json:"results"`
	Generation       int64          `json:"generation"`
}

type v1Resource struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

// betaJob is a job as the v1beta3 (and, without resultCode, v1beta2) routes
// answer it.
type betaJob struct {
	ID                    string         `json:"id"`
	ParentJobID           *string        `json:"parentJobId"`
	Type                  string         `json:"type"`
	ResourceURI           string         `json:"resourceUri"`
	CreatedAt             string         `json:"createdAt"`
	UpdatedAt             string         `json:"updatedAt"`
	DisplayName           string         `json:"displayName"`
	Name                  string         `json:"name"`
	JobTemplateURI        string         `json:"jobTemplateUri"`
	AssociatedResourceURI string         `json:"associatedResourceUri"`
	Resource              betaResource   `json:"resource"`
	Data                  map[string]any `json:"data"`
	State                 string         `json:"state"`
	Status                string         `json:"status"`
	StatusDetails         map[string]any `json:"statusDetails"`
	Generation            int64          `json:"generation"`
}

type betaResource struct {
	ResourceURI string `json:"resourceUri"`
	Type        string `json:"type"`
}

type v1beta3Job struct {
	betaJob
	ResultCode *string `json:"resultCode"`
}

// renderJob is a job's body in an API version.
func renderJob(version string, r JobRecord) any {
	params := r.Params
	if params == nil {
		params = map[string]any{}
	}
	if version == "v1" {
		var results map[string]any
		if terminal(r.State) {
			results = map[string]any{}
		}
		return v1Job{
			ID: r.ID, ParentJobID: nullable(r.ParentJobID), Type: "compute-ops-mgmt/job",
			ResourceURI: jobURI("v1", r.ID),
			CreatedAt:   r.CreatedAt.Format(timeFormat), UpdatedAt: r.UpdatedAt.Format(timeFormat),
			Cancelable: !terminal(r.State), Name: r.Name, JobTemplate: r.TemplateID,
			Resource:  v1Resource{Type: r.ResourceType, ID: r.ResourceID},
			JobParams: params, State: r.State, ResultCode: nullable(r.ResultCode),
			Status: r.Status, StatusDetails: map[string]any{}, Results: results,
			Generation: r.Generation,
		}
	}
	coll := knownTypes[r.ResourceType]
	resURI := "/compute-ops-mgmt/v1beta2/" + coll + "/" + url.PathEscape(r.ResourceID)
	b := betaJob{
		ID: r.ID, ParentJobID: nullable(r.ParentJobID), Type: "compute-ops-mgmt/job",
		ResourceURI: jobURI(version, r.ID),
		CreatedAt:   r.CreatedAt.Format(timeFormat), UpdatedAt: r.UpdatedAt.Format(timeFormat),
		DisplayName: r.Name, Name: r.Name,
		JobTemplateURI:        "/compute-ops-mgmt/v1beta2/job-templates/" + r.TemplateID,
		AssociatedResourceURI: resURI,
		Resource:              betaResource{ResourceURI: resURI, Type: coll},
		Data:                  params, State: r.State, Status: r.Status,
		StatusDetails: map[string]any{}, Generation: r.Generation,
	}
	if version == "v1beta2" {
		return b
	}
	return v1beta3Job{betaJob: b, ResultCode: nullable(r.ResultCode)}
}
