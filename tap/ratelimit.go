package tap

import (
	"sync"
	"time"
)

// tokenBucket allows rate events per second on average and burst at once.
// The zero value allows nothing; set rate, burst and tokens.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // tokens added per second
	burst  float64 // most tokens held
	tokens float64
	last   time.Time // when tokens was last brought up to date
}

// allow takes a token at time now if there is one.
func (b *tokenBucket) allow(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() {
		if elapsed := now.Sub(b.last); elapsed > 0 {
			b.tokens = min(b.burst, b.tokens+elapsed.Seconds()*b.rate)
		}
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
