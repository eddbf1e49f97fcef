// Unit tests of the labextension's pure parts (formatting, the dialog's checks, the shared model):
// `npm test`. Node, no browser: the browser tests live in tests/browser.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    environment: 'node'
  }
});
