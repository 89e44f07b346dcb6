package notify

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRoute(t *testing.T) {
	cfg := Config{DefaultChannel: "#default", Routes: []Route{
		{Template: "Server Firmware Update", Channel: "#firmware"},
		{State: "STALLED", Mention: "<!subteam^S0123>"},
		{Labels: map[string]string{"team": "storage"}, Result: "FAILURE", Channel: "#storage", Mention: "<@U0456>"},
	}}
	fw := TemplateFacts{Slug: "server-firmware-update", Name: "Server Firmware Update"}
	tests := []struct {
		name                  string
		f                     facts
		urgent                bool
		wantChan, wantMention string
	}{
		{"default", facts{state: "COMPLETE", result: "SUCCESS"}, false, "#default", ""},
		{"template rule", facts{template: fw, state: "COMPLETE"}, false, "#firmware", ""},
		{"request channel wins", facts{template: fw, channel: "#mine"}, false, "#mine", ""},
		{"stalled mention", facts{state: "STALLED"}, true, "#default", "<!subteam^S0123>"},
		{"label and result", facts{state: "COMPLETE", result: "FAILURE", labels: map[string]string{"team": "storage"}}, true, "#storage", "<@U0456>"},
		{"no mention on success", facts{state: "COMPLETE", result: "FAILURE", labels: map[string]string{"team": "storage"}}, false, "#storage", ""},
		{"label mismatch", facts{state: "COMPLETE", result: "FAILURE", labels: map[string]string{"team": "net"}}, true, "#default", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ch, m := cfg.route(tc.f, tc.urgent)
			if ch != tc.wantChan || m != tc.wantMention {
				t.Errorf("route = %q %q, want %q %q", ch, m, tc.wantChan, tc.wantMention)
			}
		})
	}
}

func TestLoadRoutes(t *testing.T) {
	tests := []struct {
		name, body string
		wantErr    bool
	}{
		{"valid", `{"routes":[{"state":"STALLED","mention":"<!subteam^S0123>"},{"template":"x","channel":"C0123"}]}`, false},
		{"mention not slack syntax", `{"routes":[{"state":"STALLED","mention":"@channel"}]}`, true},
		{"rule without effect", `{"routes":[{"state":"ERROR"}]}`, true},
		{"unknown field", `{"routes":[{"chanel":"#x"}]}`, true},
		{"bad channel", `{"routes":[{"channel":"<!channel>"}]}`, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "routes.json")
			if err := os.WriteFile(p, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadRoutes(p)
			if (err != nil) != tc.wantErr {
				t.Errorf("err = %v, wantErr %v", err, tc.wantErr)
			}
		})
	}
}
