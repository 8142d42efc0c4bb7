package testbed

import (
	"testing"

	"github.com/ringnet/ringnet/node"
)

func nodeConfigForTest() node.Config {
	return node.Config{TAP: node.TAPConfig{Address: "10.128.0.1/16"}}
}

func TestParsePing(t *testing.T) {
	tests := []struct {
		out  string
		want PingResult
	}{
		{`PING 10.9.0.1 (10.9.0.1) 56(84) bytes of data.

--- 10.9.0.1 ping statistics ---
500 packets transmitted, 464 received, 7.2% packet loss, time 1289ms
rtt min/avg/max/mdev = 0.004/0.010/0.060/0.008 ms
`, PingResult{Transmitted: 500, Received: 464, AvgRTTMs: 0.010}},
		{`--- 10.128.0.2 ping statistics ---
3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2041ms
`, PingResult{Transmitted: 3}},
	}
	for _, tt := range tests {
		got, err := ParsePing(tt.out)
		if err != nil || got != tt.want {
			t.Errorf("ParsePing(%q) = %+v, %v; want %+v", tt.out, got, err, tt.want)
		}
	}
	if _, err := ParsePing("ping: connect: Network is unreachable\n"); err == nil {
		t.Error("ParsePing of an error message: want an error")
	}
}

func TestParseIperf3(t *testing.T) {
	got, err := ParseIperf3([]byte(`{"start":{},"end":{"sum_sent":{"bytes":2000,"retransmits":3},
		"sum_received":{"seconds":3.01,"bytes":1900,"bits_per_second":5049.8}}}`))
	want := IperfResult{Bytes: 1900, SentBytes: 2000, BitsPerSecond: 5049.8, Seconds: 3.01, Retransmits: 3}
	if err != nil || got != want {
		t.Errorf("ParseIperf3 = %+v, %v; want %+v", got, err, want)
	}
	if _, err := ParseIperf3([]byte(`{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}`)); err == nil {
		t.Error("ParseIperf3 of a failed run: want an error")
	}
}

func TestParseNftCounters(t *testing.T) {
	got, err := parseNftCounters([]byte(`{"nftables": [{"metainfo": {"version": "1.0.6"}},
		{"counter": {"family": "netdev", "name": "total", "table": "t", "handle": 2, "packets": 500, "bytes": 42000}},
		{"counter": {"family": "netdev", "name": "dropped", "table": "t", "handle": 3, "packets": 36, "bytes": 3024}}]}`))
	if err != nil || got["total"] != 500 || got["dropped"] != 36 {
		t.Errorf("parseNftCounters = %v, %v", got, err)
	}
}

func FuzzParsePing(f *testing.F) {
	f.Add("3 packets transmitted, 3 received, 0% packet loss\nrtt min/avg/max/mdev = 1/2/3/4 ms")
	f.Fuzz(func(t *testing.T, out string) {
		r, err := ParsePing(out)
		if err == nil && (r.Transmitted < 0 || r.Received < 0) {
			t.Errorf("negative counts %+v", r)
		}
	})
}

func FuzzParseIperf3(f *testing.F) {
	f.Add([]byte(`{"end":{"sum_received":{"bytes":1,"bits_per_second":8}}}`))
	f.Fuzz(func(t *testing.T, data []byte) { ParseIperf3(data) })
}

func FuzzParseNftCounters(f *testing.F) {
	f.Add([]byte(`{"nftables":[{"counter":{"name":"total","packets":1}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) { parseNftCounters(data) })
}
