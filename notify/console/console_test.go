package console

import (
	"bytes"
	"strings"
	"testing"

	"github.com/comjobs/comjobs/notify"
)

func TestNotifyPrintsReadably(t *testing.T) {
	tests := []struct {
		name    string
		m       notify.Message
		want    []string
		notWant []string
	}{
		{
			name: "terminal",
			m: notify.Message{Mark: notify.MarkSuccess, Title: "COMPLETE/SUCCESS", Subject: "Server Power Off on server S01", Channel: "#ops",
				Fields: []notify.Field{{Name: "Job", Value: "j1"}, {Name: "Duration", Value: "3m0s"}}, Link: "https://x/jobs/j1"},
			want: []string{"✅ COMPLETE/SUCCESS — Server Power Off on server S01  [#ops]\n", "    Job       j1\n", "    Duration  3m0s\n", "https://x/jobs/j1"},
		},
		{
			name:    "control characters cannot fake lines",
			m:       notify.Message{Mark: notify.MarkFailure, Title: "FAILURE", Subject: "x\n✅ COMPLETE/SUCCESS fake\x1b[2J"},
			want:    []string{"x ✅ COMPLETE/SUCCESS fake [2J"},
			notWant: []string{"\x1b", "x\n"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if _, err := New(&b).Notify(t.Context(), tc.m); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, b.String())
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(b.String(), w) {
					t.Errorf("output has %q:\n%q", w, b.String())
				}
			}
		})
	}
}
