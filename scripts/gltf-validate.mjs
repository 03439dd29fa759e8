// Validate a glTF 2.0 file with the Khronos glTF validator and print its JSON report on stdout.
//   node scripts/gltf-validate.mjs VALIDATOR_DIR FILE.glb
// VALIDATOR_DIR is the npm package's folder, as scripts/install-gltf-validator.sh prints it. The
// exit status is 0 whenever a report was made, whatever it says (the caller reads
// issues.numErrors); 2 for wrong arguments, 1 when the file cannot be read or validated at all.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";

const [validatorDir, file] = process.argv.slice(2);
if (!validatorDir || !file) {
  console.error("usage: node scripts/gltf-validate.mjs VALIDATOR_DIR FILE.glb");
  process.exit(2);
}
const require = createRequire(path.resolve(validatorDir, "package.json"));
const validator = require(path.resolve(validatorDir));
try {
  const report = await validator.validateBytes(new Uint8Array(await readFile(file)), {
    uri: path.basename(file),
    maxIssues: 0, // every issue, not the first 100
    writeTimestamp: false, // the same file gives the same report
  });
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");
} catch (error) {
  console.error(`glTF validation of ${file} failed: ${error}`);
  process.exit(1);
}
