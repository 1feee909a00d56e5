// GET a URL with Go's net/http, as a Go app configured only by its environment:
//   HTTPS_PROXY=http://127.0.0.1:15001   http.DefaultTransport's ProxyFromEnvironment (which
//                                        never proxies localhost or loopback IPs: call a name)
//   SSL_CERT_FILE=ca.pem                 crypto/x509 on Linux reads this file instead of the
//                                        system bundle file (the system directories still count)
// Prints "<status> <via header or -> <body>"; a failure goes to stderr with exit 1.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	response, err := http.Get(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	via := response.Header.Get("Via")
	if via == "" {
		via = "-"
	}
	fmt.Printf("%d %s %s\n", response.StatusCode, via, strings.TrimSpace(string(body)))
}
