package consumer

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/comjobs/comjobs/com"
	"github.com/comjobs/comjobs/schemas"
)

// Policy says which CloudEvent sources may request which templates on which
// resources. Rules are tried in order and the first whose source, template
// and resource all match decides; a request no rule matches is denied. A nil
// *Policy allows everything (no policy file).
//
// The policy trusts the request's source attribute, which is what the
// publisher claims: pair it with NATS users whose publish permissions hold
// each upstream system to its own comjobs.requests.<slug> subjects.
type Policy struct {
	Rules []Rule `json:"rules"`
}

// Rule is one policy line. Globs use '*' for any run of characters
// (slashes included) and '?' for one character; matching ignores case for
// templates. An empty list matches everything.
type Rule struct {
	// Name labels the rule in logs and rejection messages (optional).
	Name string `json:"name,omitempty"`
	// Source is a glob over the request's CloudEvent source ("" or "*": any).
	Source string `json:"source"`
	// Templates are globs over the template's slug or UUID.
	Templates []string `json:"templates,omitempty"`
	// Resources are globs over the resource id, or over "<type>/<id>"
	// (e.g. "compute-ops-mgmt/group/8a3a*").
	Resources []string `json:"resources,omitempty"`
	// Effect is "allow" or "deny".
	Effect string `json:"effect"`
}

// LoadPolicy reads a JSON policy file:
//
//	{"rules": [
//	  {"name": "firmware", "source": "//ci.example.net/pipelines/firmware",
//	   "templates": ["*firmware*"], "effect": "allow"},
//	  {"name": "no-firmware", "templates": ["*firmware*"], "effect": "deny"},
//	  {"name": "protect-x", "templates": ["*power-off"], "resources": ["8a3a2a46-*"], "effect": "deny"},
//	  {"name": "rest", "source": "*", "effect": "allow"}
//	]}
//
// Once a file exists, a request that no rule matches is denied.
func LoadPolicy(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var p Policy
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	for i, r := range p.Rules {
		if r.Effect != "allow" && r.Effect != "deny" {
			return nil, fmt.Errorf("policy %s: rule %d (%s): effect %q must be allow or deny", path, i+1, r.Name, r.Effect)
		}
	}
	return &p, nil
}

// Decide returns nil when source may run template t on resource r, or a
// *schemas.Rejection with reason forbidden naming the deciding rule.
func (p *Policy) Decide(source string, t *com.Template, r schemas.Resource) *schemas.Rejection {
	if p == nil {
		return nil
	}
	for i, rule := range p.Rules {
		if !rule.matches(source, t, r) {
			continue
		}
		if rule.Effect == "allow" {
			return nil
		}
		return schemas.Reject(schemas.ReasonForbidden, "source",
			"source %q may not run %s on %s %s (policy rule %d %s)", source, t.Slug, r.Type, r.ID, i+1, rule.Name)
	}
	return schemas.Reject(schemas.ReasonForbidden, "source",
		"source %q may not run %s on %s %s (no policy rule allows it)", source, t.Slug, r.Type, r.ID)
}

func (r Rule) matches(source string, t *com.Template, res schemas.Resource) bool {
	if r.Source != "" && !glob(r.Source, source) {
		return false
	}
	if len(r.Templates) > 0 && !anyGlob(r.Templates, strings.ToLower(t.Slug), strings.ToLower(t.ID)) {
		return false
	}
	if len(r.Resources) > 0 && !anyGlob(r.Resources, res.ID, res.Type+"/"+res.ID) {
		return false
	}
	return true
}

func anyGlob(patterns []string, subjects ...string) bool {
	for _, p := range patterns {
		for _, s := range subjects {
			if glob(strings.ToLower(p), strings.ToLower(s)) || glob(p, s) {
				return true
			}
		}
	}
	return false
}

// glob matches s against pattern, where '*' is any run of characters and
// '?' any one character.
func glob(pattern, s string) bool {
	p, str := []rune(pattern), []rune(s)
	pi, si, star, mark := 0, 0, -1, 0
	for si < len(str) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == str[si]):
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}
