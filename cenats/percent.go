package cenats

import (
	"errors"
	"strings"
	"unicode/utf8"
)

const hexDigits = "0123456789ABCDEF"

// mustEscape reports whether b must be percent-encoded in a header value:
// space, '"', '%' and everything outside printable ASCII (U+0021–U+007E).
func mustEscape(b byte) bool {
	return b <= ' ' || b >= 0x7f || b == '"' || b == '%'
}

// percentEncode encodes s for a ce- header value. Bytes of multi-byte UTF-8
// sequences are encoded one by one, as the binding requires. A value needing
// no escape is returned as is, without allocating.
func percentEncode(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if mustEscape(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if mustEscape(c) {
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0x0f])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

var (
	errBadEscape = errors.New("invalid percent-encoding")
	errBadUTF8   = errors.New("not valid UTF-8 once percent-decoded")
)

// percentDecode decodes a ce- header value. A '%' must be followed by two
// hex digits (either case), and the result must be valid UTF-8.
func percentDecode(s string) (string, error) {
	i := strings.IndexByte(s, '%')
	if i < 0 {
		if !utf8.ValidString(s) {
			return "", errBadUTF8
		}
		return s, nil
	}
	b := make([]byte, 0, len(s))
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			b = append(b, c)
			continue
		}
		if i+2 >= len(s) {
			return "", errBadEscape
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 {
			return "", errBadEscape
		}
		b = append(b, hi<<4|lo)
		i += 2
	}
	if !utf8.Valid(b) {
		return "", errBadUTF8
	}
	return string(b), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
