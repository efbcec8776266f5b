package testpostgres

import (
	"context"
	"testing"
)

func TestSchemaIsolatesTables(t *testing.T) {
	ctx := context.Background()
	a, b := DB(t), DB(t)
	if _, err := a.ExecContext(ctx, `CREATE TABLE x (v int)`); err != nil {
		t.Fatal(err)
	}
	if _, err := a.ExecContext(ctx, `INSERT INTO x VALUES (7)`); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := a.QueryRowContext(ctx, `SELECT v FROM x`).Scan(&v); err != nil || v != 7 {
		t.Fatalf("own schema: v=%d err=%v", v, err)
	}
	if _, err := b.ExecContext(ctx, `SELECT v FROM x`); err == nil {
		t.Fatal("another test's schema sees table x")
	}
}
