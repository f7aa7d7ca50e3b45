package whoami

import (
	"fmt"
	"io"
)

// patternPeriod is the length after which the /data pattern repeats; a prime
// so that a shifted or dropped block does not line up again soon.
const patternPeriod = 251

// PatternByte returns the byte at offset off of the /data stream.
func PatternByte(off int64) byte {
	return byte(off % patternPeriod)
}

// Pattern returns a reader of the first n bytes of the /data stream, which
// clients use to check what they received.
func Pattern(n int64) io.Reader {
	return &patternReader{left: n}
}

// patternReader produces the stream without allocating per call.
type patternReader struct {
	off, left int64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.left {
		b = b[:p.left]
	}
	v := byte(p.off % patternPeriod)
	for i := range b {
		b[i] = v
		v++
		if v == patternPeriod {
			v = 0
		}
	}
	p.off += int64(len(b))
	p.left -= int64(len(b))
	return len(b), nil
}

// VerifyPattern reads r to the end and checks it is exactly the first n
// bytes of the /data stream. It returns the number of bytes read and the
// offset of the first wrong byte in the error, if any.
func VerifyPattern(r io.Reader, n int64) (int64, error) {
	buf := make([]byte, 64*1024)
	var off int64
	for {
		k, err := r.Read(buf)
		for i := 0; i < k; i++ {
			if off >= n {
				return off, errTooLong(n)
			}
			if buf[i] != PatternByte(off) {
				return off, errMismatch(off)
			}
			off++
		}
		if err == io.EOF {
			if off != n {
				return off, errShort(off, n)
			}
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

func errTooLong(n int64) error { return fmt.Errorf("data stream longer than %d bytes", n) }

func errMismatch(off int64) error { return fmt.Errorf("data stream differs at byte %d", off) }

func errShort(got, want int64) error {
	return fmt.Errorf("data stream ended after %d of %d bytes", got, want)
}
