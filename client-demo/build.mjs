// Build script for the canvashub demo page.
//
//   npm run build   -> bundles src/main.js into dist/app.js (minified IIFE, no sourcemap)
//                      and copies the static files (index.html, style.css) into dist/.
//   npm run watch   -> same, rebuilding on change.
//
// dist/ is committed so the Python server can serve the page without Node.
import { build, context } from 'esbuild'
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = dirname(fileURLToPath(import.meta.url))
const srcDir = join(root, 'src')
const distDir = join(root, 'dist')
const STATIC_FILES = ['index.html', 'style.css']
const watch = process.argv.includes('--watch')

const copyStatic = () => {
  for (const name of STATIC_FILES) copyFileSync(join(srcDir, name), join(distDir, name))
}

// The minified bundle drops licence comments, so ship the licences of every
// npm package that ended up in app.js next to it.
const writeLicenses = (metafile) => {
  const pkgs = new Set()
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
    'Third-party packages bundled into app.js\n\n' + sections.join('\n' + '-'.repeat(72) + '\n\n'))
}

const report = () => {
  for (const name of readdirSync(distDir).sort()) {
    const kb = (statSync(join(distDir, name)).size / 1024).toFixed(1)
    console.log(`  dist/${name}  ${kb} KiB`)
  }
}

/** @type {import('esbuild').BuildOptions} */
const options = {
  entryPoints: [join(srcDir, 'main.js')],
  outfile: join(distDir, 'app.js'),
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['es2020'],
  minify: true,
  sourcemap: false,
  legalComments: 'none',
  metafile: true,
  logLevel: 'warning',
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

// Start from a clean dist/ so stale files (e.g. old sourcemaps) never get committed.
rmSync(distDir, { recursive: true, force: true })
mkdirSync(distDir, { recursive: true })

if (watch) {
  const ctx = await context(options)
  await ctx.watch()
  console.log('watching src/ for changes…')
} else {
  await build(options)
}
