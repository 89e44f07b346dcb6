package com_test

import (
	"testing"

	"github.com/comjobs/comjobs/com"
)

func TestParseResourceURI(t *testing.T) {
	tests := []struct {
		name, uri, wantType, wantID string
	}{
		{"seed server", "/compute-ops-mgmt/v1beta2/servers/875765-S01+1M512501AB", com.ResourceServer, "875765-S01+1M512501AB"},
		{"encoded plus", "/compute-ops-mgmt/v1beta2/servers/875765-S01%2B1M512501AB", com.ResourceServer, "875765-S01+1M512501AB"},
		{"group v1beta3", "/compute-ops-mgmt/v1beta3/groups/8a3a2a46-0102-48e2-bdd9-a29ee6909860", com.ResourceGroup, "8a3a2a46-0102-48e2-bdd9-a29ee6909860"},
		{"setting v1beta1", "/compute-ops-mgmt/v1beta1/settings/2e6c4f1a-9b3d-4c7e-8a2f-6d5b1e0c9a37", com.ResourceSetting, "2e6c4f1a-9b3d-4c7e-8a2f-6d5b1e0c9a37"},
		{"appliance v1", "/compute-ops-mgmt/v1/oneview-appliances/oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71", com.ResourceOneViewAppliance, "oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71"},
		{"filter", "/compute-ops-mgmt/v1beta2/filters/9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", com.ResourceFilter, "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"},

		{"absolute URL", "https://attacker.example.org/compute-ops-mgmt/v1beta2/servers/875765-S01+1M512501AB", "", ""},
		{"scheme-relative URL", "//attacker.example.org/compute-ops-mgmt/v1beta2/servers/x", "", ""},
		{"dot dot", "/compute-ops-mgmt/v1beta2/servers/../jobs", "", ""},
		{"dot dot id", "/compute-ops-mgmt/v1beta2/servers/..", "", ""},
		{"encoded dot dot", "/compute-ops-mgmt/v1beta2/servers/%2e%2e", "", ""},
		{"query", "/compute-ops-mgmt/v1beta2/servers/abc?x=1", "", ""},
		{"fragment", "/compute-ops-mgmt/v1beta2/servers/abc#x", "", ""},
		{"encoded slash", "/compute-ops-mgmt/v1beta2/servers/a%2Fb", "", ""},
		{"encoded slash lower", "/compute-ops-mgmt/v1beta2/servers/a%2fb", "", ""},
		{"encoded backslash", "/compute-ops-mgmt/v1beta2/servers/a%5cb", "", ""},
		{"backslash", `/compute-ops-mgmt/v1beta2/servers/a\b`, "", ""},
		{"control character", "/compute-ops-mgmt/v1beta2/servers/a\x00b", "", ""},
		{"newline", "/compute-ops-mgmt/v1beta2/servers/a\nb", "", ""},
		{"encoded newline", "/compute-ops-mgmt/v1beta2/servers/a%0Ab", "", ""},
		{"DEL", "/compute-ops-mgmt/v1beta2/servers/a\x7fb", "", ""},
		{"empty id", "/compute-ops-mgmt/v1beta2/servers/", "", ""},
		{"extra segment", "/compute-ops-mgmt/v1beta2/servers/abc/power", "", ""},
		{"trailing slash", "/compute-ops-mgmt/v1beta2/servers/abc/", "", ""},
		{"unknown collection", "/compute-ops-mgmt/v1beta2/jobs/abc", "", ""},
		{"unknown version", "/compute-ops-mgmt/v9/servers/abc", "", ""},
		{"no prefix", "servers/abc", "", ""},
		{"empty", "", "", ""},
		{"bad escape", "/compute-ops-mgmt/v1beta2/servers/a%zz", "", ""},
		{"space", "/compute-ops-mgmt/v1beta2/servers/a b", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ, id, err := com.ParseResourceURI(tt.uri)
			if tt.wantType == "" {
				if err == nil {
					t.Fatalf("ParseResourceURI(%q) = %q, %q; want refusal", tt.uri, typ, id)
				}
				return
			}
			if err != nil || typ != tt.wantType || id != tt.wantID {
				t.Fatalf("ParseResourceURI(%q) = %q, %q, %v; want %q, %q", tt.uri, typ, id, err, tt.wantType, tt.wantID)
			}
			// ResourceURI builds a URI that parses back to the same pair.
			typ2, id2, err := com.ParseResourceURI(com.ResourceURI("v1beta2", typ, id))
			if err != nil || typ2 != typ || id2 != id {
				t.Fatalf("round trip: %q, %q, %v", typ2, id2, err)
			}
		})
	}
}

func TestValidID(t *testing.T) {
	tests := []struct {
		name, id string
		ok       bool
	}{
		{"uuid", "2b8540fc-f275-48bb-ae4b-bf9a42b6cc91", true},
		{"server id with plus", "875765-S01+1M512501AB", true},
		{"oneview id", "oneview+5c1b2f6e-7a43-4a8e-9d0c-2f1e6b3a9c71", true},
		{"empty", "", false},
		{"slash", "a/b", false},
		{"dot dot", "..", false},
		{"dot dot inside", "a..b", false},
		{"encoded slash", "a%2Fb", false},
		{"encoded slash lower", "a%2fb", false},
		{"percent", "a%41", false},
		{"query", "a?b=1", false},
		{"fragment", "a#b", false},
		{"absolute URL", "https://attacker.example.org", false},
		{"control", "a\x01", false},
		{"newline", "a\r\nX-Injected: 1", false},
		{"space", "a b", false},
		{"backslash", `a\b`, false},
		{"too long", string(make([]byte, 300)), false},
		{"invalid utf8", "a\xffb", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := com.ValidID(tt.id); (err == nil) != tt.ok {
				t.Fatalf("ValidID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
			}
		})
	}
}

func TestCanonicalResourceType(t *testing.T) {
	tests := []struct{ in, want string }{
		{"compute-ops-mgmt/server", com.ResourceServer},
		{" Compute-Ops-Mgmt/Group ", com.ResourceGroup},
		{"compute-ops-mgmt/setting", com.ResourceSetting},
		{"compute-ops-mgmt/oneview-appliance", com.ResourceOneViewAppliance},
		{"compute-ops-mgmt/oneview-appliances", com.ResourceOneViewAppliance},
		{"compute-ops-mgmt/filter", com.ResourceFilter},
		{"compute-ops-mgmt/job", ""},
		{"servers", ""},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := com.CanonicalResourceType(tt.in)
			if got != tt.want || ok != (tt.want != "") {
				t.Fatalf("CanonicalResourceType(%q) = %q, %v; want %q", tt.in, got, ok, tt.want)
			}
		})
	}
	if got := com.ResourceURI("v1beta2", "compute-ops-mgmt/oneview-appliances", "oneview+x"); got != "/compute-ops-mgmt/v1beta2/oneview-appliances/oneview+x" {
		t.Errorf("ResourceURI = %q", got)
	}
	if got := com.ResourceURI("v1beta2", "nope", "x"); got != "" {
		t.Errorf("ResourceURI of unknown type = %q, want empty", got)
	}
}
