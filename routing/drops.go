package routing

import (
	"errors"
	"sync/atomic"
)

// Drops counts ring messages dropped because they did not parse or lied,
// by cause. The overlay keeps one and feeds it every Unmarshal error; the
// zero value is ready, and it is safe for concurrent use.
type Drops struct {
	Malformed, Version, TTL, TooMany, Addr, Signature atomic.Uint64
}

// Count counts err, an error from an Unmarshal method, under its cause.
func (d *Drops) Count(err error) {
	switch {
	case err == nil:
	case errors.Is(err, ErrVersion):
		d.Version.Add(1)
	case errors.Is(err, ErrTTL):
		d.TTL.Add(1)
	case errors.Is(err, ErrTooMany):
		d.TooMany.Add(1)
	case errors.Is(err, ErrAddr):
		d.Addr.Add(1)
	case errors.Is(err, ErrSignature):
		d.Signature.Add(1)
	default:
		d.Malformed.Add(1)
	}
}
