package ipvs

import (
	"fmt"
	"testing"
)

func TestParseScheduler(t *testing.T) {
	tests := []struct {
		value, want string
		wantErr     bool
	}{
		{value: "", want: "rr map[]"},
		{value: " sh ", want: "sh map[]"},
		{value: "wrr;10.244.1.11=3, 10.244.2.10=0", want: "wrr map[10.244.1.11:3 10.244.2.10:0]"},
		{value: ";10.244.1.11=2", want: "rr map[10.244.1.11:2]"},
		{value: "fastest", want: "rr map[]", wantErr: true},
		{value: "wrr;10.244.1.11", want: "wrr map[]", wantErr: true},
		{value: "wrr;pod=3", want: "wrr map[]", wantErr: true},
		{value: "wrr;10.244.1.11=70000", want: "wrr map[]", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.value, func(t *testing.T) {
			spec, err := parseScheduler(tc.value, "rr")
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if got := fmt.Sprintf("%s %v", spec.name, spec.weights); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
