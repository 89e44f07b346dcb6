package slack

import (
	"errors"
	"strings"
	"testing"

	"github.com/comjobs/comjobs/notify"
	"github.com/comjobs/comjobs/notify/slack/slacktest"
)

// TestErrorsNeverCarrySecrets covers every failure path that could echo
// the token or the webhook URL, and checks the error class.
func TestErrorsNeverCarrySecrets(t *testing.T) {
	srv := slacktest.NewServer(slacktest.Options{Tokens: []string{"xoxb-good"}, Channels: []string{"#ops"}})
	defer srv.Close()
	const hookSecret = "B000/HOOKSECRETvalue"
	tests := []struct {
		name      string
		sink      func() (notify.Sink, error)
		secret    string
		wantClass notify.ErrorClass
	}{
		{"unreachable webhook", func() (notify.Sink, error) {
			return NewWebhook("http://127.0.0.1:1/services/T000/"+hookSecret, nil)
		}, "HOOKSECRETvalue", notify.Transient},
		{"unknown webhook path", func() (notify.Sink, error) {
			return NewWebhook(strings.Replace(srv.WebhookURL(), "XXXXSECRET", "HOOKSECRETvalue", 1), nil)
		}, "HOOKSECRETvalue", notify.Setup},
		{"unreachable API", func() (notify.Sink, error) { return NewBot("xoxb-1-TOKENSECRET", "http://127.0.0.1:1/api", nil) }, "TOKENSECRET", notify.Transient},
		{"revoked token", func() (notify.Sink, error) { return NewBot("xoxb-1-TOKENSECRET", srv.URL(), nil) }, "TOKENSECRET", notify.Setup},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tc.sink()
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Notify(t.Context(), notify.Message{Kind: notify.KindTerminal, Channel: "#ops", Title: "X", Subject: "y"})
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), tc.secret) {
				t.Errorf("error carries the secret: %v", err)
			}
			var ne *notify.Error
			if !errors.As(err, &ne) || ne.Class != tc.wantClass {
				t.Errorf("error %v, want class %v", err, tc.wantClass)
			}
		})
	}
}
