// Validates Prometheus Operator objects (PodMonitor, PrometheusRule) against the operator's
// CRD schemas, which kubernetes-validate does not have: the validators of the npm package
// @kubernetes-models/prometheus-operator, generated from those CRDs (types, required fields,
// patterns such as durations). Like the API server, they accept fields the schema does not name.
//   node validate_crds.mjs NODE_MODULES_DIR OBJECTS.json...   (check_render.py --crds-out)
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, ...files] = process.argv.slice(2);
const v1 = join(modules, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1");
let failed = 0;
let checked = 0;
for (const file of files) {
  for (const object of JSON.parse(readFileSync(file, "utf8"))) {
    const { kind, apiVersion, metadata } = object;
    if (apiVersion !== "monitoring.coreos.com/v1") {
      console.error(`${file}: ${kind}/${metadata.name}: unexpected apiVersion ${apiVersion}`);
      failed++;
      continue;
    }
    const model = (await import(pathToFileURL(join(v1, `${kind}.js`)).href))[kind];
    try {
      new model(object).validate();
      checked++;
    } catch (error) {
      console.error(`${file}: ${kind}/${metadata.name}: ${error.message}`);
      failed++;
    }
  }
}
console.log(`validate_crds: ${checked} operator objects valid, ${failed} invalid`);
process.exit(failed ? 1 : 0);
