// The web console's JavaScript (plain ES modules in the browser, no build step): ESLint's
// recommended rules plus a few that catch what a reviewer would. `make lint` runs it.
import js from '@eslint/js';
import globals from 'globals';

export default [
  js.configs.recommended,
  {
    files: ['appliance/console/static/**/*.js'],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: {...globals.browser},
    },
    rules: {
      'no-unused-vars': ['error', {args: 'after-used', argsIgnorePattern: '^_'}],
      'no-var': 'error',
      'prefer-const': 'error',
      eqeqeq: ['error', 'always'],
      'no-eval': 'error',
      'no-implied-eval': 'error',
      'no-new-func': 'error',
      'no-script-url': 'error',
    },
  },
];
