package testbed

import (
	"net/netip"
	"testing"
)

func TestLastDHCPAddr(t *testing.T) {
	for _, tc := range []struct {
		log  string
		want string // "" for none
	}{
		{"", ""},
		{"bound 10.130.0.9/26 mtu=1420 lease=3600\n", "10.130.0.9/26"},
		{"BOUND 10.128.0.1/255.255.0.0 mtu=1420 lease=3600\nRENEW 10.128.0.1/255.255.0.0 mtu=1420 lease=3600\n", "10.128.0.1/16"},
		{"PREINIT\nCARRIER\nBOUND 10.128.0.7/16 mtu=1420 lease=3600\nRELEASE\n", ""},
		{"deconfig\nbound 10.130.0.9/26 mtu= lease=60\ndeconfig\nbound 10.130.0.12/26 mtu= lease=60\n", "10.130.0.12/26"},
		{"bound garbage\n", ""},
		{"BOUND 10.0.0.1/255.0.255.0\n", ""},
	} {
		got, ok := LastDHCPAddr([]byte(tc.log))
		if tc.want == "" {
			if ok {
				t.Errorf("%q: got %v, want none", tc.log, got)
			}
			continue
		}
		if want := netip.MustParsePrefix(tc.want); !ok || got != want {
			t.Errorf("%q: got %v %v, want %v", tc.log, got, ok, want)
		}
	}
}
