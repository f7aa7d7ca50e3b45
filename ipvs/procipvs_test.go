package ipvs

import (
	"fmt"
	"testing"
)

func TestParseProcIPVS(t *testing.T) {
	tests := []struct {
		name, text, want string
		wantErr          bool
	}{{
		name: "services with and without real servers",
		text: "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n" +
			"TCP  0A000001:0050 rr  persistent 150000 FFFFFFFF\n  -> 0A010001:1F90      Masq    3      2          7         \n" +
			"UDP  0A000002:0035 sh  \nSCTP  0A000003:0009 mh  \n",
		want: "map[TCP 10.0.0.1:80:[{10.1.0.1:8080 3 2 7 {0 0 0 0 0}}] UDP 10.0.0.2:53:[] SCTP 10.0.0.3:9:[]]",
	}, {
		name: "fwmark and IPv6 services are skipped with their real servers",
		text: "h\nh\nh\nFWM  00000001 rr\n  -> 0A010001:1F90      Masq    1      0          0\n" +
			"TCP  [2001:0db8:0000:0000:0000:0000:0000:0001]:0050 rr\n  -> [2001:0db8:0000:0000:0000:0000:0000:0002]:0050 Masq 1 0 0\n",
		want: "map[]",
	}, {
		name:    "bad weight",
		text:    "h\nh\nh\nTCP  0A000001:0050 rr\n  -> 0A010001:1F90      Masq    x      0          0\n",
		wantErr: true,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcIPVS(tc.text)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && fmt.Sprint(got) != tc.want {
				t.Errorf("got  %v\nwant %s", got, tc.want)
			}
		})
	}
}
