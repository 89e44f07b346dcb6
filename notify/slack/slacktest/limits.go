package slacktest

import (
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// CheckBlocks checks a Block Kit blocks array against Slack's limits as the
// server enforces them: at most 50 blocks; header text plain_text of at most
// 150 characters; section text at most 3000; at most 10 section fields of at
// most 2000 each; context at most 10 elements; every text object of type
// plain_text or mrkdwn with non-empty text. It names the first violation.
func CheckBlocks(raw json.RawMessage) error {
	var blocks []struct {
		Type     string        `json:"type"`
		Text     *textObject   `json:"text"`
		Fields   []*textObject `json:"fields"`
		Elements []*textObject `json:"elements"`
	}
	if err := json.Unmarshal(raw, &blocks); err != nil {
		return fmt.Errorf("blocks: %w", err)
	}
	if len(blocks) == 0 {
		return errors.New("blocks: empty")
	}
	if len(blocks) > 50 {
		return fmt.Errorf("blocks: %d blocks, at most 50", len(blocks))
	}
	for i, b := range blocks {
		switch b.Type {
		case "header":
			if err := b.Text.check(150, true); err != nil {
				return fmt.Errorf("blocks[%d] header: %w", i, err)
			}
		case "section":
			if b.Text == nil && len(b.Fields) == 0 {
				return fmt.Errorf("blocks[%d] section: needs text or fields", i)
			}
			if b.Text != nil {
				if err := b.Text.check(3000, false); err != nil {
					return fmt.Errorf("blocks[%d] section text: %w", i, err)
				}
			}
			if len(b.Fields) > 10 {
				return fmt.Errorf("blocks[%d] section: %d fields, at most 10", i, len(b.Fields))
			}
			for j, f := range b.Fields {
				if err := f.check(2000, false); err != nil {
					return fmt.Errorf("blocks[%d] field %d: %w", i, j, err)
				}
			}
		case "context":
			if len(b.Elements) == 0 || len(b.Elements) > 10 {
				return fmt.Errorf("blocks[%d] context: %d elements, want 1..10", i, len(b.Elements))
			}
			for j, e := range b.Elements {
				if err := e.check(3000, false); err != nil {
					return fmt.Errorf("blocks[%d] context element %d: %w", i, j, err)
				}
			}
		case "divider", "image", "actions", "rich_text", "markdown":
		default:
			return fmt.Errorf("blocks[%d]: unknown type %q", i, b.Type)
		}
	}
	return nil
}

type textObject struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

func (t *textObject) check(max int, plainOnly bool) error {
	if t == nil {
		return errors.New("missing text object")
	}
	if t.Type != "plain_text" && (plainOnly || t.Type != "mrkdwn") {
		return fmt.Errorf("text type %q not allowed", t.Type)
	}
	if t.Text == "" {
		return errors.New("empty text")
	}
	if n := utf8.RuneCountInString(t.Text); n > max {
		return fmt.Errorf("text of %d characters, at most %d", n, max)
	}
	return nil
}
