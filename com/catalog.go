package com

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"
)

// Resource types of the catalog (v1 form).
const (
	ResourceServer           = "compute-ops-mgmt/server"
	ResourceGroup            = "compute-ops-mgmt/group"
	ResourceSetting          = "compute-ops-mgmt/setting"
	ResourceOneViewAppliance = "compute-ops-mgmt/oneview-appliance"
	ResourceFilter           = "compute-ops-mgmt/filter"
)

// Template is one job template of the compiled-in catalog.
type Template struct {
	ID           string // durable UUID, the same in every region
	Name         string // display name, e.g. "Server Power Off"
	Slug         string // kebab case, e.g. "server-power-off"
	CamelName    string // e.g. "ServerPowerOff"
	Description  string
	ResourceType string // canonical v1 resource type
	// Params is the JSON Schema (draft 2020-12) of the job's parameters.
	Params json.RawMessage
	// Required lists the required parameters, from the seed's table.
	Required []string
	// Deprecated is non-empty for templates HPE has removed, saying why.
	Deprecated string
	// ExpectedDuration is how long a job of this template usually takes;
	// the tracker derives poll intervals and overdue thresholds from it.
	ExpectedDuration time.Duration
}

// Templates returns every template of the compiled-in catalog, in a stable
// order: the seed's table first, in its order, then the two firmware-download
// templates. The slice is a fresh copy; callers may keep or modify it.
func Templates() []Template {
	out := make([]Template, len(catalog))
	for i := range catalog {
		out[i] = catalog[i].clone()
	}
	return out
}

// Lookup finds a template by its UUID, display name ("Server Power Off"),
// slug ("server-power-off") or CamelName ("ServerPowerOff"), ignoring case and
// surrounding whitespace. It returns a copy, so the catalog cannot be changed
// through it. Deprecated templates are found like any other; callers should
// surface Template.Deprecated.
func Lookup(s string) (*Template, bool) {
	i, ok := catalogIndex[strings.ToLower(strings.TrimSpace(s))]
	if !ok {
		return nil, false
	}
	t := catalog[i].clone()
	return &t, true
}

func (t Template) clone() Template {
	t.Params = append(json.RawMessage(nil), t.Params...)
	t.Required = append([]string(nil), t.Required...)
	return t
}

// catalogIndex maps every lower-cased name form of a template to its index in
// catalog. Built once; the catalog test checks no two templates collide.
var catalogIndex = func() map[string]int {
	m := make(map[string]int, 4*len(catalog))
	for i, t := range catalog {
		for _, k := range []string{t.ID, t.Name, t.Slug, t.CamelName} {
			m[strings.ToLower(k)] = i
		}
	}
	return m
}()

// collections maps the canonical v1 resource type to the collection segment
// of the seed-style (v1beta*) resource URIs.
var collections = map[string]string{
	ResourceServer:           "servers",
	ResourceGroup:            "groups",
	ResourceSetting:          "settings",
	ResourceOneViewAppliance: "oneview-appliances",
	ResourceFilter:           "filters",
}

// CanonicalResourceType returns the canonical v1 form of a resource type,
// ignoring case and surrounding whitespace. It accepts the five v1 types and
// the seed's second spelling of the OneView appliance type,
// "compute-ops-mgmt/oneview-appliances", which is the same kind of resource.
// ok is false for anything else.
func CanonicalResourceType(t string) (string, bool) {
	t = strings.ToLower(strings.TrimSpace(t))
	if t == "compute-ops-mgmt/oneview-appliances" {
		return ResourceOneViewAppliance, true
	}
	if _, ok := collections[t]; ok {
		return t, true
	}
	return "", false
}

// resourceURIVersions are the API versions accepted in a seed-style resource
// URI. The seed writes them with v1beta2; the others are accepted so that a
// URI copied from another COM answer still works.
var resourceURIVersions = map[string]bool{"v1": true, "v1beta1": true, "v1beta2": true, "v1beta3": true}

const uriPrefix = "/compute-ops-mgmt/"

// ParseResourceURI maps a seed-style resource URI such as
// "/compute-ops-mgmt/v1beta2/servers/875765-S01+1M512501AB" to the canonical
// v1 resource type and the resource id. The version may be v1, v1beta1,
// v1beta2 or v1beta3; the collection servers, groups, settings,
// oneview-appliances or filters. The id may be percent-encoded (%2B for +)
// and is returned decoded.
//
// It refuses, with an error naming the problem: absolute URLs (scheme or
// "//host"), query strings, fragments, "..", backslashes, percent-encoded
// slashes or backslashes (any case), control characters, unknown versions or
// collections, an empty id, and extra path segments. The decoded id must
// also pass ValidID. Nothing is ever fetched.
func ParseResourceURI(uri string) (resourceType, id string, err error) {
	if err := refuseUnsafe(uri); err != nil {
		return "", "", fmt.Errorf("resource URI %q: %w", printable(uri), err)
	}
	if !strings.HasPrefix(uri, uriPrefix) {
		return "", "", fmt.Errorf("resource URI %q: must start with %s (absolute URLs and other paths are refused)", printable(uri), uriPrefix)
	}
	parts := strings.Split(strings.TrimPrefix(uri, uriPrefix), "/")
	if len(parts) != 3 {
		return "", "", fmt.Errorf("resource URI %q: want %s<version>/<collection>/<id>", printable(uri), uriPrefix)
	}
	version, collection, rawID := parts[0], parts[1], parts[2]
	if !resourceURIVersions[version] {
		return "", "", fmt.Errorf("resource URI %q: unknown API version %q", printable(uri), version)
	}
	for typ, c := range collections {
		if c == collection {
			resourceType = typ
		}
	}
	if resourceType == "" {
		return "", "", fmt.Errorf("resource URI %q: unknown collection %q", printable(uri), collection)
	}
	id, err = url.PathUnescape(rawID)
	if err != nil {
		return "", "", fmt.Errorf("resource URI %q: bad escape in id: %w", printable(uri), err)
	}
	if err := ValidID(id); err != nil {
		return "", "", fmt.Errorf("resource URI %q: %w", printable(uri), err)
	}
	return resourceType, id, nil
}

// ResourceURI builds the seed-style URI of a resource, as the v1beta3 create
// body wants it: "/compute-ops-mgmt/<version>/<collection>/<path-escaped id>".
// resourceType may be any form CanonicalResourceType accepts. It returns ""
// for an unknown resource type; it does not validate id (callers check
// ValidID first).
func ResourceURI(version, resourceType, id string) string {
	t, ok := CanonicalResourceType(resourceType)
	if !ok {
		return ""
	}
	return uriPrefix + version + "/" + collections[t] + "/" + url.PathEscape(id)
}

// maxIDLen bounds ids; COM's are UUIDs, serial+product pairs or "oneview+<uuid>".
const maxIDLen = 256

// ValidID reports whether id is safe to put into a request path as one
// segment: non-empty, at most 256 bytes, and free of "/", "\", "..", "?",
// "#", "%" (so no encoded slash or double encoding can slip through),
// whitespace and control characters. Ids such as "875765-S01+1M512501AB" and
// "oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71" pass. The client calls it
// before any request that carries an id.
func ValidID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("empty id")
	case len(id) > maxIDLen:
		return fmt.Errorf("id longer than %d bytes", maxIDLen)
	}
	if err := refuseUnsafe(id); err != nil {
		return fmt.Errorf("id %q: %w", printable(id), err)
	}
	if strings.ContainsAny(id, "/%:") {
		return fmt.Errorf("id %q: contains '/', '%%' or ':'", printable(id))
	}
	for _, r := range id {
		if unicode.IsSpace(r) {
			return fmt.Errorf("id %q: contains whitespace", printable(id))
		}
	}
	return nil
}

// refuseUnsafe refuses what is never acceptable in an id or resource URI.
func refuseUnsafe(s string) error {
	for _, r := range s {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return fmt.Errorf("contains a control character or invalid UTF-8")
		}
	}
	lower := strings.ToLower(s)
	switch {
	case strings.Contains(s, "://") || strings.HasPrefix(s, "//"):
		return fmt.Errorf("absolute URLs are refused")
	case strings.ContainsAny(s, "?#"):
		return fmt.Errorf("query strings and fragments are refused")
	case strings.Contains(s, `\`):
		return fmt.Errorf("backslashes are refused")
	case strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c"):
		return fmt.Errorf("encoded slashes are refused")
	case strings.Contains(lower, "%2e") || strings.Contains(s, ".."):
		return fmt.Errorf("dot segments are refused")
	}
	return nil
}

// printable quotes at most 80 bytes of s for an error message.
func printable(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return s
}
