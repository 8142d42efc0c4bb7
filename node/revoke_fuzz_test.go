package node

import (
	"testing"

	"github.com/ringnet/ringnet/overlay/cert"
)

// FuzzRevocationRecord feeds the DHT's revocation validator what a peer
// could store: it must refuse or accept, never panic, and Select must pick
// only a record Validate accepts.
func FuzzRevocationRecord(f *testing.F) {
	owner, err := cert.GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	key, _ := revocationKey(cert.Namespace, "lab", owner.GetPublic())
	rev, _ := cert.Revoke(owner, cert.Namespace, "lab", cert.NewSerial(), trustNow)
	good, _ := encodeRevocationRecord(owner.GetPublic(), []cert.Revocation{rev})
	empty, _ := encodeRevocationRecord(owner.GetPublic(), nil)
	f.Add(key, good)
	f.Add(key, empty)
	f.Add("/revoke/namespace/lab", good)
	f.Add(key, []byte{0, 1, 8})
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		v := revocationValidator{}
		err := v.Validate(key, value)
		i, serr := v.Select(key, [][]byte{value})
		if (err == nil) != (serr == nil) || (serr == nil && i != 0) {
			t.Fatalf("Validate = %v but Select = %d, %v", err, i, serr)
		}
	})
}
