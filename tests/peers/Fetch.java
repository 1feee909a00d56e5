// GET a URL with the JDK's own HttpClient, as a Java app configured only by system properties
// (run as a single source file: `java Fetch.java URL`):
//   -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=15001   fusebox; the default ProxySelector
//                                                          reads these, HttpClient tunnels with CONNECT
//   -Djavax.net.ssl.trustStore=fusebox-trust.p12           a PKCS12 store holding fusebox's ca.pem
//   -Djavax.net.ssl.trustStorePassword=changeit            (it replaces the JDK's cacerts)
// Prints "<status> <via header or -> <body>"; a failure is an exception and exit 1.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Fetch {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newHttpClient();
        HttpRequest request = HttpRequest.newBuilder(URI.create(args[0])).build();
        HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
        String via = response.headers().firstValue("via").orElse("-");
        System.out.println(response.statusCode() + " " + via + " " + response.body().trim());
    }
}
