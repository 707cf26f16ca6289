// Wrapper module that pins hey, the HTTP load generator of the serving benchmark (bench/serving.py).
module aliasroll.io/cluster/hey

go 1.25.0

require github.com/rakyll/hey v0.1.5

require (
	golang.org/x/net v0.48.0 // indirect
	golang.org/x/text v0.33.0 // indirect
)
