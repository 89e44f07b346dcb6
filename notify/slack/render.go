package slack

import (
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/slack-go/slack"

	"github.com/comjobs/comjobs/notify"
)

// Block Kit limits the renderer keeps within.
const (
	MaxHeader      = 150
	MaxSectionText = 3000
	MaxField       = 2000
	MaxFields      = 10
	MaxBlocks      = 50
	MaxText        = 40000
)

var broadcastRE = regexp.MustCompile(`(?i)@(channel|here|everyone)`)

// Escape makes event text inert in Slack mrkdwn: &, < and > become entities
// (so "<!channel>" cannot ping and "<http://x|y>" cannot link) and a word
// joiner is put after the @ of @channel, @here and @everyone.
func Escape(s string) string {
	s = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
	return broadcastRE.ReplaceAllString(s, "@\u2060$1")
}

// cut shortens escaped text to at most max runes, ending with "…", without
// splitting an entity.
func cut(s string, max int) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)[:max-1]
	if i := lastIndexRune(r, '&'); i >= 0 && i > len(r)-6 && !containsRune(r[i:], ';') {
		r = r[:i]
	}
	return string(r) + "…"
}

func lastIndexRune(r []rune, c rune) int {
	for i := len(r) - 1; i >= 0; i-- {
		if r[i] == c {
			return i
		}
	}
	return -1
}

func containsRune(r []rune, c rune) bool {
	for _, x := range r {
		if x == c {
			return true
		}
	}
	return false
}

// safeURL keeps a comjobs-built URL from breaking out of <url|label>.
func safeURL(u string) string {
	return strings.NewReplacer("<", "%3C", ">", "%3E", "|", "%7C", " ", "%20").Replace(u)
}

// Render turns m into Block Kit blocks and the plain-text fallback, with all
// event text escaped and every text within Slack's limits. It is pure and
// safe for concurrent use.
func Render(m notify.Message) ([]slack.Block, string) {
	title := strings.TrimSpace(m.Mark + " " + m.Title)
	header := cut(Escape(title+" — "+m.Subject), MaxHeader)
	blocks := []slack.Block{
		slack.NewHeaderBlock(slack.NewTextBlockObject(slack.PlainTextType, header, true, false)),
	}
	intro := "*" + Escape(m.Subject) + "*"
	if m.Mention != "" {
		intro = m.Mention + " " + intro
	}
	blocks = append(blocks, slack.NewSectionBlock(slack.NewTextBlockObject(slack.MarkdownType, cut(intro, MaxSectionText), false, false), nil, nil))
	if len(m.Fields) > 0 {
		n := min(len(m.Fields), MaxFields)
		fields := make([]*slack.TextBlockObject, 0, n)
		for _, f := range m.Fields[:n] {
			fields = append(fields, slack.NewTextBlockObject(slack.MarkdownType, cut("*"+Escape(f.Name)+"*\n"+Escape(f.Value), MaxField), false, false))
		}
		blocks = append(blocks, slack.NewSectionBlock(nil, fields, nil))
	}
	if len(m.Lines) > 0 {
		var b strings.Builder
		for i, l := range m.Lines {
			if i > 0 {
				b.WriteByte('\n')
			}
			b.WriteString(Escape(l))
		}
		blocks = append(blocks, slack.NewSectionBlock(slack.NewTextBlockObject(slack.MarkdownType, cut(b.String(), MaxSectionText), false, false), nil, nil))
	}
	if m.Link != "" {
		blocks = append(blocks, slack.NewContextBlock("", slack.NewTextBlockObject(slack.MarkdownType, "<"+safeURL(m.Link)+"|Open the job in Compute Ops Management>", false, false)))
	}
	if len(blocks) > MaxBlocks {
		blocks = blocks[:MaxBlocks]
	}
	return blocks, Fallback(m)
}

// Fallback is the plain-text version of m used for notifications and by
// clients that cannot show blocks: mark, title, subject and fields, escaped.
func Fallback(m notify.Message) string {
	var b strings.Builder
	if m.Mention != "" {
		b.WriteString(m.Mention + " ")
	}
	b.WriteString(Escape(strings.TrimSpace(m.Mark+" "+m.Title) + ": " + m.Subject))
	for _, f := range m.Fields {
		b.WriteString("\n" + Escape(f.Name+": "+f.Value))
	}
	for _, l := range m.Lines {
		b.WriteString("\n" + Escape(l))
	}
	if m.Link != "" {
		b.WriteString("\n" + safeURL(m.Link))
	}
	return cut(b.String(), MaxText)
}
