package slacktest

import (
	"errors"
	"strings"
	"testing"

	"github.com/slack-go/slack"
)

func TestServerAnswersLikeSlack(t *testing.T) {
	srv := NewServer(Options{Tokens: []string{"xoxb-good"}, Channels: []string{"#ops"}})
	defer srv.Close()
	good := slack.New("xoxb-good", slack.OptionAPIURL(srv.URL()))
	bad := slack.New("xoxb-bad", slack.OptionAPIURL(srv.URL()))
	tests := []struct {
		name    string
		call    func() error
		wantErr string
	}{
		{"post", func() error {
			_, _, err := good.PostMessageContext(t.Context(), "#ops", slack.MsgOptionText("hi", false))
			return err
		}, ""},
		{"second post within a second is rate limited", func() error {
			_, _, err := good.PostMessageContext(t.Context(), "#ops", slack.MsgOptionText("again", false))
			var rl *slack.RateLimitedError
			if errors.As(err, &rl) && rl.RetryAfter > 0 {
				return errors.New("ratelimited")
			}
			return err
		}, "ratelimited"},
		{"unknown channel", func() error {
			_, _, err := good.PostMessageContext(t.Context(), "#nope", slack.MsgOptionText("hi", false))
			return err
		}, "channel_not_found"},
		{"bad token", func() error { _, err := bad.AuthTestContext(t.Context()); return err }, "invalid_auth"},
		{"over-limit header", func() error {
			h := slack.NewHeaderBlock(slack.NewTextBlockObject(slack.PlainTextType, strings.Repeat("x", 151), false, false))
			_, _, err := good.PostMessageContext(t.Context(), "#ops", slack.MsgOptionBlocks(h))
			return err
		}, "invalid_blocks"},
		{"too long text", func() error {
			_, _, err := good.PostMessageContext(t.Context(), "#ops", slack.MsgOptionText(strings.Repeat("x", 40001), false))
			return err
		}, "msg_too_long"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want %s", err, tc.wantErr)
			}
		})
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("%d recorded messages, want 1", n)
	}
}
