// Build script for the canvashub demo pages.
//
//   npm run build   -> dist/editor.js (the editor, /c/{id}), dist/home.js (the canvas list, /),
//                      dist/sw.js (service worker), all minified IIFEs without sourcemaps,
//                      plus the static files (index.html, canvas.html, style.css), the API
//                      reference page (api-docs.html, served at /docs, with swagger-ui-dist's
//                      prebuilt renderer copied to dist/vendor/: it works offline) and
//                      THIRD_PARTY_LICENSES.txt.
//   npm run watch   -> same, rebuilding on change.
//
// dist/ is committed so the Python server can serve the pages without Node.
// The build is deterministic: the same sources give byte-identical dist/.
import { build, context } from 'esbuild'
import { createHash } from 'node:crypto'
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = dirname(fileURLToPath(import.meta.url))
const srcDir = join(root, 'src')
const distDir = join(root, 'dist')
const STATIC_FILES = ['index.html', 'canvas.html', 'style.css', 'api-docs.html', 'api-docs.js']
// Prebuilt files of npm packages, copied as they are (the API page's renderer).
const VENDOR_FILES = [['swagger-ui-dist', 'swagger-ui-bundle.js'], ['swagger-ui-dist', 'swagger-ui.css']]
const watch = process.argv.includes('--watch')

const copyStatic = () => {
  for (const name of STATIC_FILES) copyFileSync(join(srcDir, name), join(distDir, name))
  mkdirSync(join(distDir, 'vendor'), { recursive: true })
  for (const [pkg, name] of VENDOR_FILES) copyFileSync(join(root, 'node_modules', pkg, name), join(distDir, 'vendor', name))
}

// Names the service worker's cache after the sources, so a new build replaces the cached shell.
const buildId = () => {
  const hash = createHash('sha256')
  for (const name of readdirSync(srcDir).sort()) hash.update(name).update(readFileSync(join(srcDir, name)))
  hash.update(readFileSync(join(root, 'package-lock.json')))
  return hash.digest('hex').slice(0, 12)
}

// The minified bundles drop licence comments, so ship the licences of every
// npm package that ended up in them.
const writeLicenses = (metafile) => {
  const pkgs = new Set(VENDOR_FILES.map(([pkg]) => pkg))
  for (const output of Object.values(metafile.outputs)) {
    for (const input of Object.keys(output.inputs)) {
      const m = input.match(/node_modules\/((?:@[^/]+\/)?[^/]+)\//)
      if (m) pkgs.add(m[1])
    }
  }
  const sections = [...pkgs].sort().map((name) => {
    const dir = join(root, 'node_modules', name)
    const { version, license } = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
    const file = readdirSync(dir).find((f) => /^licen[cs]e/i.test(f))
    const text = file && existsSync(join(dir, file)) ? readFileSync(join(dir, file), 'utf8').trim() : `License: ${license}`
    return `${name}@${version} (${license})\n\n${text}\n`
  })
  writeFileSync(join(distDir, 'THIRD_PARTY_LICENSES.txt'),
    'Third-party packages bundled into editor.js and home.js, or copied to vendor/\n\n' + sections.join('\n' + '-'.repeat(72) + '\n\n'))
}

const report = () => {
  for (const name of readdirSync(distDir).sort()) {
    const kb = (statSync(join(distDir, name)).size / 1024).toFixed(1)
    console.log(`  dist/${name}  ${kb} KiB`)
  }
}

/** @type {import('esbuild').BuildOptions} */
const common = {
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['es2020'],
  minify: !process.argv.includes('--dev'),
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning'
}

/** @type {import('esbuild').BuildOptions} */
const pages = {
  ...common,
  entryPoints: { editor: join(srcDir, 'editor.js'), home: join(srcDir, 'home.js') },
  outdir: distDir,
  metafile: true,
  plugins: [{
    name: 'copy-static',
    setup (b) {
      b.onEnd((result) => {
        if (result.errors.length === 0) {
          copyStatic()
          writeLicenses(result.metafile)
          report()
        }
      })
    }
  }]
}

const worker = () => ({
  ...common,
  entryPoints: [join(srcDir, 'sw.js')],
  outfile: join(distDir, 'sw.js'),
  define: { __BUILD_ID__: JSON.stringify(buildId()) }
})

// Start from a clean dist/ so stale files (e.g. old bundles) never get committed.
rmSync(distDir, { recursive: true, force: true })
mkdirSync(distDir, { recursive: true })

if (watch) {
  const ctx = await context(pages)
  await ctx.watch()
  let swCtx = await context(worker())
  await swCtx.watch()
  console.log('watching src/ for changes… (the service worker cache id updates on restart)')
} else {
  await build(worker())
  await build(pages)
}
