// Package equivtest holds only tests: that the overlay and ext4
// materializers, which both read layers through layerio.Entries, build the
// same tree from the same image, for every tartest fixture and every input
// of the materializers' fuzz corpora. It imports both materializers, which
// no other package may do without a cycle.
package equivtest
