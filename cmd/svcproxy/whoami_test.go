package main

import (
	"slices"
	"testing"
)

func TestNewWhoamiCommandFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantTCP []int
		wantUDP []int
		wantErr bool
	}{
		{name: "defaults", args: nil, wantTCP: []int{80}},
		{name: "lists", args: []string{"--name", "webpod-1", "--tcp", "80,81", "--udp", "80"}, wantTCP: []int{80, 81}, wantUDP: []int{80}},
		{name: "bad port", args: []string{"--tcp", "x"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := newWhoamiCommand()
			if !cmd.Hidden || cmd.Name() != "whoami" {
				t.Fatalf("command %q hidden=%v, want hidden whoami", cmd.Name(), cmd.Hidden)
			}
			err := cmd.ParseFlags(tt.args)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseFlags(%v) error = %v, want error %v", tt.args, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			tcp, _ := cmd.Flags().GetIntSlice("tcp")
			udp, _ := cmd.Flags().GetIntSlice("udp")
			if !slices.Equal(tcp, tt.wantTCP) || !slices.Equal(udp, tt.wantUDP) {
				t.Errorf("tcp=%v udp=%v, want %v %v", tcp, udp, tt.wantTCP, tt.wantUDP)
			}
		})
	}
}
